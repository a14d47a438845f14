#!/bin/bash
cd /work/main
for pass in 1 2; do
  if [ $pass = 1 ]; then ws="256 1024"; else ws="1024 256"; fi
  for r in "NATS(JetStream)→Kafka" "Redis streams→NATS(JetStream)" "Kafka→Redis streams"; do
    for w in $ws; do
      tag=$(echo "$r" | tr -dc 'A-Za-z')-$w-$pass
      echo "== $(date -u +%T) $r window $w pass $pass"
      target/release/polybridge-bench --only "$r" --sizes 256,4096 --rounds 2 --messages 10000 --latency-messages 100 --skip-memory --broker-dir /dev/shm --max-in-flight $w --out /tmp/win/$tag > /tmp/win/$tag.log 2>&1
      grep -E "round [0-9]:" /tmp/win/$tag.log
    done
  done
done
echo "== done $(date -u +%T)"
