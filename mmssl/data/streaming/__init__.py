"""Streamed sources (WebDataset shards, Hugging Face datasets, folders), their epoch order and their loader."""

from mmssl.data.streaming import folder_source, hf_source, webdataset_source  # noqa: F401  (register the sources)
