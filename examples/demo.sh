#!/usr/bin/env bash
# The main job, end to end, on the example sites (run by `make demo`):
# compile the policies into plans, then serve the plant from real local
# protocol servers, with faults on a schedule, collect from them into a
# signed SQLite store, verify it, and show a tampered copy failing; then
# apply a short retention (seconds) with a legal hold, and verify the deletions.
set -euo pipefail
cd "$(dirname "$0")/.."
SITES="examples/sites/plant-basel examples/sites/water-works"
BASEL=examples/sites/plant-basel
POLICIES=policies
OUT=demo-out

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }

# The simulator serves the plant on these local ports (see examples/sites/plant-basel/site.yaml);
# check them first, so that a busy one is named now rather than failing at step 7.
PORTS=("5020:Modbus/TCP of reactor-1-plc" "5021:Modbus/TCP of cleanroom-emu-1"
       "5022:Modbus/TCP of reactor-7" "4840:OPC UA of filler-2" "1883:MQTT broker of the plant")
busy=$(python - "${PORTS[@]}" <<'PY'
import socket, sys
for entry in sys.argv[1:]:
    port, _, what = entry.partition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", int(port)))
        except OSError:
            print(f"  port {port} ({what}) is in use")
PY
)
if [ -n "$busy" ]; then
  printf 'make demo: the simulated plant needs ports 5020-5022, 4840 and 1883 on 127.0.0.1:\n%s\n' "$busy" >&2
  printf 'Stop what listens there (ss -ltnp shows it), or run the demo on a machine where they are free.\n' >&2
  exit 1
fi

rm -rf "$OUT" && mkdir -p "$OUT"

step "1. Check every policy against both site inventories" "converge check -p $POLICIES -s $SITES"
converge check -p $POLICIES -s $SITES

step "2. Compile one canonical, content-addressed plan per device" "converge plan -p $POLICIES -s $SITES -o $OUT/plans"
converge plan -p $POLICIES -s $SITES -o $OUT/plans

step "3. Why does this point get what it gets?" "converge explain reactor-1-plc/TT101_PV -p $POLICIES -s $SITES"
converge explain reactor-1-plc/TT101_PV -p $POLICIES -s $SITES
converge explain reactor-7/TT701_PV -p $POLICIES -s $SITES

step "4. What is governed, what is not, which waivers are in force" "converge coverage -p $POLICIES -s $SITES"
converge coverage -p $POLICIES -s $SITES

step "5. A typo a compliance engineer might make" "converge check (with 'retension:')"
mkdir -p $OUT/typo
sed 's/^retention:/retension:/' policies/gmp/critical-process-data.yaml > $OUT/typo/gmp.yaml
converge check -p $OUT/typo -s $BASEL || echo "(exit code $?: the error names file, line and column)"

step "6. Make the signing keys (encrypted files, mode 0600) and sign the plant's plans" \
     "converge keys generate qa-signing --keys $OUT/keys; ...; converge plan ... --sign plan-signing"
# a demo passphrase; a real site gives its own through the environment or a prompt
export CONVERGE_KEY_PASSPHRASE="converge demo passphrase, never in production"
for key in qa-signing site-integrity ops-signing audit-log plan-signing; do
  converge keys generate $key --keys $OUT/keys > /dev/null
done
converge keys list --keys $OUT/keys
converge plan -p $POLICIES -s $BASEL -o $OUT/basel-plans --keys $OUT/keys --sign plan-signing \
  --as j.doe@example.com --meaning approved \
  | tail -n 1
# the short-retention demo pack (examples/retention: reactor readings kept at most 20 s), for step 17
converge plan -p examples/retention/policies -s $BASEL -o $OUT/retention-plans > /dev/null

step "7. Serve the plant from real local servers (Modbus TCP, OPC UA, MQTT), with faults" \
     "converge simulate $BASEL --faults $BASEL/faults.yaml --for 36s &"
converge simulate $BASEL --faults $BASEL/faults.yaml --for 36s > $OUT/simulate.log 2>&1 &
SIMULATOR=$!
trap 'kill $SIMULATOR 2>/dev/null || true' EXIT
# it prints its first "serving" line once every server listens: wait for it (at most 30 s)
for _ in $(seq 300); do grep -q '^serving' $OUT/simulate.log && break; sleep 0.1; done
grep -q '^serving' $OUT/simulate.log || { cat $OUT/simulate.log; exit 1; }
cat $OUT/simulate.log

step "8. Collect into a signed SQLite store for 24 s (the simulator stops reactor-1-plc 10 s after it started and restarts it at 19 s)" \
     "converge run --plans $OUT/basel-plans --require-signed plan-signing --keys $OUT/keys --db $OUT/evidence.db --for 24s"
echo "(beside it, for 12 s, a second collector runs the short-retention pack into $OUT/retention.db: step 17)"
converge run --plans $OUT/retention-plans --keys $OUT/keys --db $OUT/retention.db \
  --spool $OUT/retention-spool.db --for 12s > $OUT/retention-run.log 2>&1 &
RETAINER=$!
trap 'kill $SIMULATOR $RETAINER 2>/dev/null || true' EXIT
converge run --plans $OUT/basel-plans --require-signed plan-signing --keys $OUT/keys \
  --db $OUT/evidence.db --spool $OUT/spool.db --witness $OUT/checkpoints.jsonl --for 24s
wait $SIMULATOR 2>/dev/null || true
wait $RETAINER || { cat $OUT/retention-run.log; exit 1; }

step "9. The injected fault and the recovery, as the stored records show them" \
     "python examples/show_recovery.py $OUT/evidence.db reactor-1-plc"
python examples/show_recovery.py $OUT/evidence.db reactor-1-plc
python examples/show_recovery.py $OUT/evidence.db cleanroom-emu-1

step "10. The audit log: plans deployed, keys, batches stored, the collector's start and stop" \
     "converge audit log --db $OUT/evidence.db"
converge audit log --db $OUT/evidence.db > $OUT/audit-log.txt
sed -n '1,14p' $OUT/audit-log.txt
echo "..."
tail -n 3 $OUT/audit-log.txt

step "11. An auditor verifies every record, batch root, signature, audit entry and checkpoint" \
     "converge audit verify --db $OUT/evidence.db --keys $OUT/keys --witness $OUT/checkpoints.jsonl --plan-key plan-signing"
converge audit verify --db $OUT/evidence.db --keys $OUT/keys --witness $OUT/checkpoints.jsonl \
  --plan-key plan-signing

step "12. Someone edits one stored reading in a copy of the store; verification names the batch" \
     "python examples/tamper.py $OUT/tampered.db; converge audit verify --db $OUT/tampered.db ..."
cp $OUT/evidence.db $OUT/tampered.db
python examples/tamper.py $OUT/tampered.db
converge audit verify --db $OUT/tampered.db --keys $OUT/keys --witness $OUT/checkpoints.jsonl \
  --plan-key plan-signing || echo "(exit code $?: the tampered store does not verify)"

step "13. An IT system reads through the access guard: a bearer token, the read API, one allowed and one denied call" \
     "converge principals token historian-sync ...; converge serve --db $OUT/evidence.db ... &; GET /v1/points/.../recorded"
cp $BASEL/principals.yaml $OUT/principals.yaml
converge principals token historian-sync --principals $OUT/principals.yaml > $OUT/token.txt
converge principals token erin@example.com --principals $OUT/principals.yaml > $OUT/token-erin.txt
head -n 2 $OUT/token.txt
converge serve --db $OUT/evidence.db --principals $OUT/principals.yaml --keys $OUT/keys --port 0 \
  > $OUT/serve.log 2>&1 &
SERVER=$!
trap 'kill $SIMULATOR $RETAINER $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q '^serving' $OUT/serve.log && break; sleep 0.1; done
URL=$(sed -n 's/^serving \(http[^ ]*\)\/v1\/points.*/\1/p' $OUT/serve.log)
python - "$URL" "$(tail -n 1 $OUT/token.txt)" "$(tail -n 1 $OUT/token-erin.txt)" <<'PY'
import sys, urllib.error, urllib.request
url, token, erin = sys.argv[1:]
path = "/v1/points/reactor-1-plc/TT101_PV/recorded?format=csv"
for who, bearer in (("historian-sync", token), ("erin@example.com", erin)):
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request) as answer:
            status, body = answer.status, answer.read().decode()
            decision = answer.headers["X-Converge-Decision"]
    except urllib.error.HTTPError as refused:
        status, body, decision = refused.code, refused.read().decode(), refused.headers["X-Converge-Decision"]
    print(f"GET {path} as {who}: {status}, decision {decision}")
    print("\n".join(body.splitlines()[:3]))
PY
kill $SERVER 2>/dev/null || true
converge audit log --db $OUT/evidence.db --kind access.decision

step "14. An auditor's export: the reactor's records with everything that proves them, one zip" \
     "converge export --db $OUT/evidence.db --as inspector@audit.example --device reactor-1-plc -o $OUT/reactor-1.zip"
converge export --db $OUT/evidence.db --principals $BASEL/principals.yaml --as inspector@audit.example \
  --keys $OUT/keys --device reactor-1-plc -o $OUT/reactor-1.zip
converge keys trust --db $OUT/evidence.db --keys $OUT/keys --plan-key plan-signing -o $OUT/trust.json
python -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()[:6]), "\n...")' \
  $OUT/reactor-1.zip

step "15. Offline, in a fresh virtualenv holding only cryptography, the bundle's own verify.py checks it" \
     "python -m venv auditor; auditor/bin/pip install cryptography; auditor/bin/python verify.py $OUT/reactor-1.zip --trust $OUT/trust.json"
python -m venv $OUT/auditor
$OUT/auditor/bin/pip install --quiet --disable-pip-version-check cryptography > $OUT/pip.log 2>&1 \
  || { cat $OUT/pip.log; exit 1; }
python -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("verify.py"))' \
  $OUT/reactor-1.zip > $OUT/verify.py
(cd $OUT && auditor/bin/python -I verify.py reactor-1.zip --trust trust.json)

step "16. One byte of the bundle changed: the verifier names the member and the batch" \
     "python examples/flip_byte.py $OUT/reactor-1.zip $OUT/changed.zip; verify.py $OUT/changed.zip ..."
python examples/flip_byte.py $OUT/reactor-1.zip $OUT/changed.zip records.jsonl
(cd $OUT && auditor/bin/python -I verify.py changed.zip --trust trust.json) \
  || echo "(exit code $?: the changed bundle does not verify)"
python -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("report.html"))' \
  $OUT/reactor-1.zip > $OUT/report.html
echo "the auditor's report: $OUT/report.html"

step "17. Retention: the reactors' readings are kept at most 20 s; legal holds reactor-7, then a run deletes what expired, each batch with a signed receipt" \
     "converge hold add --as lena@example.com --keys $OUT/keys --device reactor-7 ...; converge retention apply --db $OUT/retention.db --job nightly-retention"
converge hold add --db $OUT/retention.db --principals examples/retention/principals.yaml \
  --as lena@example.com --keys $OUT/keys --device reactor-7 \
  --reason "litigation hold: batch dispute on reactor-7"
converge retention apply --db $OUT/retention.db --job nightly-retention --keys $OUT/keys

step "18. The auditor verifies the store: the deletions are lawful (named with their receipts), the held data is kept and noted" \
     "converge audit verify --db $OUT/retention.db --keys $OUT/keys"
converge audit verify --db $OUT/retention.db --keys $OUT/keys
