#!/bin/sh
# Every goal of issue #21 once, at 2,000 and then 10,000 datanodes: the status latency
# under whole-list fetches, the pages, the memory per reservation and the restart (five
# starts). Each command prints its figures with their verdict or ratio to the goal; each
# round starts with the VM's speed then (vm_speed.py: VMs of one kind differ).
#     benchmarks/scale_all.sh [ROUNDS]     (default 1; the README's figures: 2)
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-src}"
rounds="${1:-1}"
python=/opt/wfm-orchestrator/bin/python  # the service's, as the benchmarks' servers use
[ -x "$python" ] || python=python3
round=1
while [ "$round" -le "$rounds" ]; do
    for n in 2000 10000; do
        echo "=== round $round, $n datanodes, $(date -u +%H:%M:%S)"
        "$python" benchmarks/vm_speed.py
        python3 benchmarks/scale.py latency --datanodes "$n"
        python3 benchmarks/scale.py page --datanodes "$n"
        python3 benchmarks/scale_state.py memory --datanodes "$n"
        python3 benchmarks/scale_state.py restart --datanodes "$n" --runs 5
    done
    round=$((round + 1))
done
