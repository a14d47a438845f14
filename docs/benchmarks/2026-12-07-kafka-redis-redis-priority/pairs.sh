#!/bin/bash
cd /work/main
for i in 3 4; do
 for mode in nice plain; do
  out=/tmp/prof/pair-$mode-$i.txt
  ROUTE=kafka-redis PERF=0 scripts/profile-route.sh target/release/polybridge 1500000 256 > $out 2>&1 &
  sp=$!
  if [ $mode = nice ]; then
    for k in $(seq 1 120); do p=$(pgrep -x redis-server); [ -n "$p" ] && break; sleep 0.25; done
    renice -n -10 -p $p >> $out.renice 2>&1
  fi
  wait $sp
  echo "$mode $i $(grep '^rate' $out)" >> /tmp/prof/pairs.log
 done
done
echo done >> /tmp/prof/pairs.log
