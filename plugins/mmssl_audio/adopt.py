"""Feeding a released audio encoder: raw waveforms (wav2vec2 / HuBERT) or its log-mel features (AST)."""

from __future__ import annotations

from typing import Any

from mmssl_audio.options import AudioOptions


def _set(options: AudioOptions, update: dict[str, Any], key: str, value: Any) -> None:
    """Adopt ``value`` for ``key``, unless the recipe set ``key`` to something else (then refuse, naming it)."""
    current = getattr(options, key)
    if key in options.model_fields_set and current is not None and current != value:
        raise ValueError(
            f"options.{key} is {current!r}, but the released encoder needs {value!r}; remove options.{key} "
            "(it is set from the encoder)"
        )
    update[key] = value


def adopt(options: AudioOptions, preprocessing: Any) -> AudioOptions:
    """Options that feed the released encoder what it expects (``mmssl.encoders.base.Preprocessing``).

    ``waveform`` encoders get ``features: waveform`` at their sample rate (they normalise each clip
    themselves); ``log_mel`` encoders (AST) get ``features: log_mel`` with their ``n_mels``, sample rate and
    normalisation mean/std, and ``max_seconds`` at most their input length (``max_length`` frames of
    ``hop_ms``).

    Raises:
        ValueError: The encoder reads another input, or the recipe sets an option to another value than the
            encoder needs (the message names the option).
    """
    update: dict[str, Any] = {}
    if preprocessing.input == "waveform":
        _set(options, update, "features", "waveform")
    elif preprocessing.input == "log_mel":
        _set(options, update, "features", "log_mel")
        if preprocessing.n_mels:
            _set(options, update, "n_mels", int(preprocessing.n_mels))
        if preprocessing.mean:
            _set(options, update, "mean", float(preprocessing.mean[0]))
        if preprocessing.std:
            _set(options, update, "std", float(preprocessing.std[0]))
        if preprocessing.max_length:
            longest = preprocessing.max_length * options.hop_ms / 1000.0
            if options.max_seconds > longest:
                if "max_seconds" in options.model_fields_set:
                    raise ValueError(
                        f"options.max_seconds is {options.max_seconds}, but the released encoder reads at most "
                        f"{preprocessing.max_length} frames ({longest:g} s at hop_ms {options.hop_ms}); lower it"
                    )
                update["max_seconds"] = longest
    else:
        raise ValueError(
            f"the audio plugin feeds waveforms or log-mel spectrograms, but this encoder reads {preprocessing.input}"
        )
    if preprocessing.sample_rate:
        _set(options, update, "sample_rate", int(preprocessing.sample_rate))
    return AudioOptions.model_validate(options.model_dump() | update)
