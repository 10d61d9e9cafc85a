"""The classic DAGonStar 5-task demo: A; B and C after A; D after B and C; E after D.

Every edge comes from a ``workflow:///TASK/PATH`` reference: dagon stages the
producer's file into the consumer's scratch directory and rewrites the
reference to the staged path before the command runs.

    dagon run examples/taskflow/taskflow.py          # embedded broker + agent
    DAGON_BROKER=mqtt://127.0.0.1:1883 dagon run examples/taskflow/taskflow.py
"""

import dagon

wf = dagon.Workflow("Taskflow-Demo")
wf.shell("A", "mkdir -p output && hostname > output/f1.txt")
wf.shell("B", "echo B-$RANDOM > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt")
wf.shell("C", "echo C-$RANDOM > f2.txt; cat workflow:///A/output/f1.txt >> f2.txt")
wf.shell("D", "cat workflow:///B/f2.txt >> f3.txt; cat workflow:///C/f2.txt >> f3.txt")
wf.shell("E", "cat workflow:///D/f3.txt > result.txt; wc -l < result.txt")

if __name__ == "__main__":
    result = wf.run()
    if result is not None and not result.ok:
        raise SystemExit(f"workflow failed: {result.cause}")
