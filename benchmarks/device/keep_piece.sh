#!/usr/bin/env bash
# There: moves the model pieces that this call carried out of the carried path, into an ignored
# folder that stays on the warm machine between calls (a carried path is replaced next call).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .device-keep
for f in .device/model.part*; do [ -e "$f" ] && mv "$f" .device-keep/; done
ls -la .device-keep
