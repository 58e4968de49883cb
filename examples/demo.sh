#!/usr/bin/env bash
# The main job, end to end, on the example sites (run by `make demo`):
# compile the policies into plans, then serve the plant from real local
# protocol servers, with faults on a schedule, and collect from them.
set -euo pipefail
cd "$(dirname "$0")/.."
SITES="examples/sites/plant-basel examples/sites/water-works"
BASEL=examples/sites/plant-basel
POLICIES=policies
OUT=demo-out

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }
rm -rf "$OUT" && mkdir -p "$OUT"

step "1. Check every policy against both site inventories" "converge check -p $POLICIES -s $SITES"
converge check -p $POLICIES -s $SITES

step "2. Compile one canonical, content-addressed plan per device" "converge plan -p $POLICIES -s $SITES -o $OUT/plans"
converge plan -p $POLICIES -s $SITES -o $OUT/plans

step "3. Why does this point get what it gets?" "converge explain reactor-1-plc/TT101_PV -p $POLICIES -s $BASEL"
converge explain reactor-1-plc/TT101_PV -p $POLICIES -s $SITES
converge explain reactor-7/TT701_PV -p $POLICIES -s $SITES

step "4. What is governed, what is not, which waivers are in force" "converge coverage -p $POLICIES -s $SITES"
converge coverage -p $POLICIES -s $SITES

step "5. A typo a compliance engineer might make" "converge check (with 'retension:')"
mkdir -p $OUT/typo
sed 's/^retention:/retension:/' policies/gmp/critical-process-data.yaml > $OUT/typo/gmp.yaml
converge check -p $OUT/typo -s $BASEL || echo "(exit code $?: the error names file, line and column)"

step "6. Serve the plant from real local servers (Modbus TCP, OPC UA, MQTT), with faults" \
     "converge simulate $BASEL --faults $BASEL/faults.yaml --for 24s &"
converge simulate $BASEL --faults $BASEL/faults.yaml --for 24s > $OUT/simulate.log 2>&1 &
SIMULATOR=$!
trap 'kill $SIMULATOR 2>/dev/null || true' EXIT
sleep 3
cat $OUT/simulate.log

step "7. Collect from the plant for 16 s (reactor-1-plc is stopped at 6 s and restarted at 10 s)" \
     "converge run --plans $OUT/basel-plans --for 16s --out $OUT/records.jsonl"
converge plan -p $POLICIES -s $BASEL -o $OUT/basel-plans > /dev/null 2>&1
converge run --plans $OUT/basel-plans --for 16s --out $OUT/records.jsonl

step "8. The injected fault and the recovery, as the records show them" \
     "python examples/show_recovery.py $OUT/records.jsonl reactor-1-plc"
python examples/show_recovery.py $OUT/records.jsonl reactor-1-plc
python examples/show_recovery.py $OUT/records.jsonl cleanroom-emu-1
wait $SIMULATOR 2>/dev/null || true
