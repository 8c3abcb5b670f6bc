#!/bin/bash
# usage: alt.sh ROUNDS CLOCK name:dir ...
rounds=$1; clock=$2; shift 2
mkdir -p /tmp/b/logs
for r in $(seq 1 $rounds); do
  for spec in "$@"; do
    name=${spec%%:*}; dir=${spec#*:}
    log=/tmp/b/logs/$clock-$name-r$r.log
    (cd $dir && HOT_PATH_CLOCK=$clock /tmp/b/$name --bench whole_chain > $log 2>&1)
    med=$(grep -A1 'on_batch_4096_with_barriers$' $log | grep time: | awk '{print $4,$5}')
    ob=$(grep -o 'on_batch alone [0-9.]* ns/event' $log)
    db=$(grep -o 'delta barriers, [0-9.]* ms' $log)
    echo "$(date +%T) r$r $clock $name median=$med | $ob | $db"
  done
done
