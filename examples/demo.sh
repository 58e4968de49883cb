#!/usr/bin/env bash
# The main job, end to end, on the example site (run by `make demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE="examples/sites/plant-basel examples/sites/water-works"
POLICIES=policies
OUT=demo-out/plans

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }

step "1. Check every policy against the site inventory" "converge check -p $POLICIES -s $SITE"
converge check -p $POLICIES -s $SITE

step "2. Compile one canonical, content-addressed plan per device" "converge plan -p ... -s $SITE -o $OUT"
converge plan -p $POLICIES -s $SITE -o $OUT

step "3. Why does this point get what it gets?" "converge explain reactor-1-plc/TT101_PV ..."
converge explain reactor-1-plc/TT101_PV -p $POLICIES -s $SITE
converge explain reactor-7/TT701_PV -p $POLICIES -s $SITE

step "4. What is governed, what is not, which waivers are in force" "converge coverage ..."
converge coverage -p $POLICIES -s $SITE

step "5. A typo a compliance engineer might make" "converge check (with 'retension:')"
mkdir -p demo-out/typo
sed 's/^retention:/retension:/' policies/gmp/critical-process-data.yaml > demo-out/typo/gmp.yaml
converge check -p demo-out/typo -s examples/sites/plant-basel || echo "(exit code $?: the error names file, line and column)"
