"""Example mmssl components, each registered through its own entry-point group (see ``pyproject.toml``).

- ``align_uniform`` (objective): alignment and uniformity on the hypersphere (Wang & Isola, 2020).
- ``stripes`` (data source): synthetic RGB images of horizontal, vertical or diagonal stripes.
- ``tinyconv`` (encoder library): a small convolutional encoder read from a safetensors file.

Each module is self-contained, so a recipe can also name it as a plugin file (``plugins: [.../stripes.py]``).
"""
