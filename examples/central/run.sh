#!/usr/bin/env bash
# Beyond one machine, on one machine (docs/scale-out.md): a Mosquitto broker and a
# PostgreSQL server (the throwaway ones tests/services.sh starts), the two example
# sites served by `converge simulate`, a site collector for each publishing its
# sealed batches through the broker, and one ingester storing them in the central
# store. Then both sides verify: the central store, and each site's own log with
# the centre's cosignatures.
#
#   bash examples/central/run.sh        (from a checkout where `make test` ran once)
#
# Needs the simulators' ports free (Modbus 5020-5022 and 5030-5033, OPC UA 4840,
# MQTT 1883 and 1884) and is not to be run while `make test` runs in the same
# checkout (both use tests/services.sh). Its files are in central-out/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH=$PWD/.venv/bin:$PATH
OUT=central-out
SITES="plant-basel water-works"
export MOSQUITTO_PORT=${MOSQUITTO_PORT:-39830} MOSQUITTO_TLS_PORT=${MOSQUITTO_TLS_PORT:-39831}
export POSTGRES_PORT=${POSTGRES_PORT:-39832}
# a demo passphrase; a real site and centre each give their own
export CONVERGE_KEY_PASSPHRASE="converge central example, never in production"

step() { printf '\n\033[1m== %s\033[0m\n' "$1"; }
rm -rf "$OUT" && mkdir -p "$OUT"

step "1. A broker and a PostgreSQL server (tests/services.sh)"
bash tests/services.sh start
trap 'kill $(jobs -p) 2>/dev/null || true; bash tests/services.sh stop' EXIT
set -a; . tests/.services.env; set +a
BROKER=$CONVERGE_MOSQUITTO
CENTRAL=$CONVERGE_POSTGRES_URL

step "2. The centre's keys: its audit log's and its witness's"
for key in audit-log witness; do
  converge keys generate $key --keys $OUT/centre/keys > /dev/null
  converge keys export-public $key --keys $OUT/centre/keys --format json > $OUT/centre/$key.json
done

step "3. Each site: its own keys, its plans, and its public keys in the centre's trust folder"
for site in $SITES; do
  mkdir -p $OUT/$site $OUT/centre/trust/$site
  for key in qa-signing site-integrity ops-signing audit-log; do
    converge keys generate $key --keys $OUT/$site/keys > /dev/null
    converge keys export-public $key --keys $OUT/$site/keys --format json \
      > $OUT/centre/trust/$site/$key.json
  done
  converge plan -p policies -s examples/sites/$site -o $OUT/$site/plans --keys $OUT/$site/keys \
    | tail -n 1
done
ls -R $OUT/centre/trust

step "4. The centre: converge ingest (more of them would share the work)"
converge ingest --broker $BROKER --db $CENTRAL --trust $OUT/centre/trust \
  --keys $OUT/centre/keys > $OUT/centre/ingest.log 2>&1 &
INGEST=$!

step "5. Both sites served by real local protocol servers"
converge simulate examples/sites --for 60s > $OUT/simulate.log 2>&1 &
# it prints its first "serving" line once every server listens: wait for it (at most 30 s)
for _ in $(seq 300); do grep -q '^serving' $OUT/simulate.log && break; sleep 0.1; done
grep -q '^serving' $OUT/simulate.log || { cat $OUT/simulate.log; exit 1; }

step "6. Two site collectors, each publishing to the centre for 20 s"
RUNS=()
for site in $SITES; do
  (cd $OUT/$site && converge run --plans plans --keys keys --publish $BROKER --site-id $site \
     --for 20s > run.log 2>&1) &
  RUNS+=($!)
done
wait "${RUNS[@]}"
for site in $SITES; do
  echo "$site:"; grep -E "^(evidence|published)" -A1 $OUT/$site/run.log | sed 's/^/  /'
done
kill -INT $INGEST; wait $INGEST || true
cat $OUT/centre/ingest.log

step "7. The centre's log: what each site deployed, and the cosigned checkpoints of their logs"
converge audit log --db $CENTRAL --kind plan.deployed checkpoint.cosigned | tail -n 6

step "8. An auditor verifies the central store: each site's batches by that site's own keys (--site-trust), the log by the centre's"
converge audit verify --db $CENTRAL --site-trust $OUT/centre/trust \
  --public-keys $OUT/centre/audit-log.json

step "9. Each site verifies its own log, and the centre's cosignatures of it"
for site in $SITES; do
  converge audit verify --db $OUT/$site/converge-log.db --keys $OUT/$site/keys \
    --witness $OUT/$site/converge-checkpoints.jsonl --cosigned-by $OUT/centre/witness.json
done
