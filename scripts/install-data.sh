#!/usr/bin/env bash
# Installs the real data the quickstart recipe and the tests read (see docs/data.md):
# Fashion-MNIST from Debian's dataset-fashion-mnist package. Without apt, the recipe can download the
# standard copy instead: `make demo ARGS="data.train.download=true data.test.download=true"`.
set -euo pipefail
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q >/dev/null || true
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
  echo "installed dataset-fashion-mnist"
else
  echo "apt-get not found: Fashion-MNIST is not installed. Run the demo with" >&2
  echo '  make demo ARGS="data.train.download=true data.test.download=true"' >&2
fi
