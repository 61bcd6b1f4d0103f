#!/usr/bin/env bash
# Installs everything semaim needs on a fresh Debian machine with Python 3.11:
# the Debian Fashion-MNIST package (the built-in dataset), PyTorch, and semaim itself (editable, with dev tools).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
# --upgrade: the newest releases the declared ranges allow, as a fresh machine would resolve them.
python3 -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
