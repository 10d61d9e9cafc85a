"""Two pods passing a file through ``workflow://``.

Submit it to agents deployed with this directory (see README.md)::

    dagon submit examples/kubernetes/workflow.py --broker mqtt://BROKER:1883 --wait
"""

import dagon
from dagon.core import Task

wf = dagon.Workflow("k8s-pipeline")
pod = {"image": "busybox:1.36"}
wf.add(Task(name="make", command="echo payload > data.txt", runtime="kubernetes", runtime_options=pod))
wf.add(
    Task(
        name="shout",
        command="tr a-z A-Z < workflow:///make/data.txt > shout.txt; cat shout.txt",
        runtime="kubernetes",
        runtime_options=pod,
        cpus=0.5,
        memory=64 * 2**20,
    )
)
