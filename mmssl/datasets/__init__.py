"""Loaders for particular datasets, registered as data sources the way any third-party source is.

The generic machinery (manifest and concat sources, the view dataset, collator and sampler) is :mod:`mmssl.data`.
Importing this package registers the built-in datasets (``SOURCES`` imports it on first use):
``fashion_mnist``, ``sklearn_digits``, ``spoken_digits``, ``spoken_commands``, ``twemoji``, ``noto_emoji``,
``spam_assassin`` and ``fortunes``.
"""

from mmssl.datasets import digits, fashion_mnist, fortunes, spam_assassin, twemoji  # noqa: F401  (registers the sources)
