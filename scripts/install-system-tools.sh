#!/usr/bin/env bash
# The real DICOM peers the tests talk to: DCMTK (storescu/storescp/echoscu), dicom3tools
# (dciodvfy) and Orthanc. Installed with apt-get when run as root on Debian (as CI is);
# elsewhere it says what is missing, and the tests that need a tool skip, naming it.
set -euo pipefail
missing=()
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system tools: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: ${missing[*]} not installed (needs root and apt-get); tests that use them will skip" >&2
fi
