#!/bin/sh
# bench/stop-masters.sh DIR: every ssh master connection whose socket is in DIR (hrun's:
# STATE/ssh; ansible's: its control path dir) stopped; the benches run it before a cold
# run and at their end.
for s in "$1"/*; do
    [ -S "$s" ] && ssh -o ControlPath="$s" -O exit any >/dev/null 2>&1
done
exit 0
