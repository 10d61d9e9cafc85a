"""Map/gather with the native API: a fan-out decided at run time.

``split`` writes one file per chunk of its input; ``count`` is mapped over
whatever files ``split`` produced (one task per file, created when ``split``
has succeeded); ``total`` gathers every copy's ``n.txt``. A static parameter
sweep runs next to it.

    dagon run examples/dataflow/map-gather.py
    dagon graph examples/dataflow/map-gather.py --format mermaid
"""

import dagon

wf = dagon.Workflow("Map-Gather")
wf.shell("split", "mkdir parts && seq 1 100 > numbers && split -l 25 numbers parts/chunk_")
SUM = "awk '{s += $1} END {print s}'"
count = wf.map("count", f"{SUM} workflow:///split/parts/chunk_* > n.txt", over="workflow:///split/parts/chunk_*")
wf.gather("total", f"cat {{inputs}} | {SUM} > total.txt", over=count, path="n.txt")
wf.sweep("scale", "echo $(( {factor} * {offset} )) > value.txt", {"factor": [1, 2, 3], "offset": [10, 20]})

if __name__ == "__main__":
    result = wf.run()
    if result is not None:
        if not result.ok:
            raise SystemExit(f"workflow failed: {result.cause}")
        with open(result["total"].workdir + "/total.txt") as total:
            print(total.read().strip())
