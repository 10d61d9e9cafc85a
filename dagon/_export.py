"""Export a workflow: Graphviz DOT, Mermaid, and CWL v1.2.

All three are computed from the validated graph alone — nothing runs.

CWL: one ``Workflow`` with an inline ``CommandLineTool`` per task (``bash -c``
the command). Each ``workflow://`` reference becomes a data link: the producer
step gets an output whose ``glob`` is the referenced path, the consumer an input
fed from it, and the reference in the command becomes that input's path
(``$(inputs.in_0.path)``; arrays are joined with spaces). Explicit edges, which
carry no data, link the producer's captured stdout to an optional input of the
consumer so CWL runners keep the order. A dynamic map becomes a scattered step
over the producer's matching files. References to other workflows become
workflow inputs. ``$(`` and ``${`` of the shell command are escaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from dagon.core import Reference, Workflow
from dagon.protocol import REFERENCE_RE

__all__ = ["FORMATS", "export", "to_cwl", "to_dot", "to_mermaid"]

FORMATS: Final = ("mermaid", "dot", "cwl")
_GLOB: Final = re.compile(r"[*?\[]")
_ID: Final = re.compile(r"[^A-Za-z0-9_]")
_IMAGE_RUNTIMES: Final = frozenset({"docker", "apptainer", "kubernetes", "nomad"})


def _edges(wf: Workflow) -> list[tuple[str, str, str, bool]]:
    """(producer, consumer, label, carries data) for every edge of ``wf``; producers of other
    workflows are written ``Workflow/task``."""
    graph = wf.graph(external=True)
    out: list[tuple[str, str, str, bool]] = []
    for name in graph.order:
        task = wf[name]
        by_producer: dict[str, list[str]] = {}
        for ref in graph.refs_of(name):
            key = ref.task if ref.workflow in ("", wf.name) else f"{ref.workflow}/{ref.task}"
            by_producer.setdefault(key, []).append(ref.path)
        for producer, paths in by_producer.items():
            out.append((producer, name, ", ".join(dict.fromkeys(paths)), True))
        for dep in sorted(graph.deps[name]):
            if dep not in by_producer:
                out.append((dep, name, "map" if task.map_over else "after", False))
    return out


# -- DOT and Mermaid --------------------------------------------------------------


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(workflows: Iterable[Workflow]) -> str:
    """A Graphviz ``digraph``: one cluster per workflow, data edges labelled with paths,
    explicit edges dashed, map templates drawn as stacks."""
    lines = ["digraph dagon {", "  rankdir=TB;", "  node [shape=box, style=rounded];"]
    edges: list[str] = []
    for i, wf in enumerate(workflows):
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(f"    label={_dot_quote(wf.name)};")
        for task in wf:
            label = f"{task.name}\\n[{task.runtime}]"
            shape = ""
            if task.map_over:
                label += f"\\nmap over {task.map_reference().path}"  # type: ignore[union-attr]
                shape = ", shape=box3d"
            lines.append(f'    {_dot_quote(f"{wf.name}/{task.name}")} [label="{label}"{shape}];')
        lines.append("  }")
        for producer, consumer, label, data in _edges(wf):
            src = producer if "/" in producer else f"{wf.name}/{producer}"
            style = "" if data else ", style=dashed"
            edges.append(
                f"  {_dot_quote(src)} -> {_dot_quote(f'{wf.name}/{consumer}')} [label={_dot_quote(label)}{style}];"
            )
    lines.extend(edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(workflows: Iterable[Workflow]) -> str:
    """A Mermaid ``flowchart``: one subgraph per workflow; ``-.->`` for explicit edges."""
    ids: dict[str, str] = {}

    def node(key: str) -> str:
        if key not in ids:
            ids[key] = f"n{len(ids)}"
        return ids[key]

    lines = ["flowchart TD"]
    edges: list[str] = []
    for i, wf in enumerate(workflows):
        lines.append(f'  subgraph w{i}["{_mermaid_text(wf.name)}"]')
        for task in wf:
            label = f"{task.name}<br/>[{task.runtime}]"
            if task.map_over:
                label += f"<br/>map over {task.map_reference().path}"  # type: ignore[union-attr]
                lines.append(f'    {node(f"{wf.name}/{task.name}")}[["{_mermaid_text(label)}"]]')
            else:
                lines.append(f'    {node(f"{wf.name}/{task.name}")}["{_mermaid_text(label)}"]')
        lines.append("  end")
        for producer, consumer, label, data in _edges(wf):
            src = node(producer if "/" in producer else f"{wf.name}/{producer}")
            arrow = "-->" if data else "-.->"
            edges.append(f'  {src} {arrow}|"{_mermaid_text(label)}"| {node(f"{wf.name}/{consumer}")}')
    lines.extend(edges)
    return "\n".join(lines) + "\n"


# -- CWL ---------------------------------------------------------------------------


def _cwl_id(text: str) -> str:
    ident = _ID.sub("_", text)
    return ident if ident[:1].isalpha() else f"t_{ident}"


def _escape(command: str) -> str:
    return command.replace("$(", "\\$(").replace("${", "\\${")


_FILE: Final = "File"
_FILES: Final = {"type": "array", "items": "File"}
_NESTED: Final = {"type": "array", "items": {"type": "array", "items": "File"}}


def _paths_expr(input_id: str, kind: Any) -> str:
    """The shell words for an input: one path, or every path of an array (flattened)."""
    if kind == _FILE:
        return f"$(inputs.{input_id}.path)"
    files = f"inputs.{input_id}" if kind == _FILES else f"[].concat.apply([], inputs.{input_id})"
    return f"$({files}.map(function(f){{return f.path;}}).join(' '))"


class _Cwl:
    def __init__(self, wf: Workflow) -> None:
        self.wf = wf
        self.graph = wf.graph(external=True)
        self.outputs: dict[str, dict[str, str]] = {}  # step -> {path: output id}
        self.inputs: dict[str, Any] = {}
        self.scattered = {n for n in self.graph.order if wf[n].map_over}

    def output_of(self, producer: str, path: str) -> str:
        outs = self.outputs.setdefault(producer, {})
        if path not in outs:
            outs[path] = f"out_{len(outs)}"
        return outs[path]

    def source(self, ref: Reference) -> tuple[str, Any]:
        """(CWL source, CWL type) of what ``ref`` points at."""
        glob = bool(_GLOB.search(ref.path))
        if ref.workflow not in ("", self.wf.name):
            wf_input = _cwl_id(f"{ref.workflow}_{ref.task}_{ref.path}")
            self.inputs[wf_input] = {"type": _FILES if glob else _FILE}
            return wf_input, _FILES if glob else _FILE
        out = self.output_of(ref.task, ref.path)
        scattered = ref.task in self.scattered
        kind = _NESTED if glob and scattered else _FILES if glob or scattered else _FILE
        return f"{_cwl_id(ref.task)}/{out}", kind

    def step(self, name: str) -> dict[str, Any]:
        task = self.wf[name]
        step_in: dict[str, Any] = {}
        tool_in: dict[str, Any] = {}
        replacements: dict[str, str] = {}
        mapped = task.map_reference() if task.map_over else None
        scatter: list[str] = []
        for i, ref in enumerate(dict.fromkeys(self.graph.refs_of(name), None)):
            input_id = f"in_{i}"
            src, kind = self.source(ref)
            if mapped is not None and ref.text == mapped.text:
                scatter.append(input_id)
                kind = _FILE  # each scattered copy gets one file
            step_in[input_id] = src
            tool_in[input_id] = {"type": kind}
            replacements[ref.text] = _paths_expr(input_id, kind)
        for dep in sorted(self.graph.deps[name]):
            if not any(r.task == dep for r in self.graph.refs_of(name)):
                input_id = f"after_{_cwl_id(dep)}"
                step_in[input_id] = f"{_cwl_id(dep)}/log"
                tool_in[input_id] = {"type": "Any?"}  # ordering only: the producer's stdout, unused
        if task.runtime == "python":
            module, _, func = task.command.partition(":")
            call = json.dumps({"args": list(task.args), "kwargs": dict(task.kwargs)})
            arguments = [
                "python3",
                "-c",
                _escape(
                    f"import importlib, json; d = json.loads({call!r});"
                    f" getattr(importlib.import_module({module!r}), {func!r})(*d['args'], **d['kwargs'])"
                ),
            ]
        else:
            escaped = _escape(task.command)
            command = REFERENCE_RE.sub(lambda m: replacements.get(m.group(0), m.group(0)), escaped)
            arguments = ["bash", "-c", command]
        tool: dict[str, Any] = {
            "class": "CommandLineTool",
            "baseCommand": arguments[:1],
            "arguments": arguments[1:],  # argv as is (no ShellCommandRequirement): bash gets one -c string
            "inputs": tool_in,
            "outputs": {"log": {"type": "stdout"}},
            "stdout": "dagon-stdout.txt",
            "requirements": [{"class": "InlineJavascriptRequirement"}],
        }
        hints: list[dict[str, Any]] = []
        image = task.runtime_options.get("image") if task.runtime in _IMAGE_RUNTIMES else None
        if isinstance(image, str) and image:
            hints.append({"class": "DockerRequirement", "dockerPull": image})
        if task.env:
            tool["requirements"].append(
                {"class": "EnvVarRequirement", "envDef": [{"envName": k, "envValue": v} for k, v in task.env.items()]}
            )
        if task.timeout is not None:
            tool["requirements"].append({"class": "ToolTimeLimit", "timelimit": max(1, int(task.timeout))})
        resources: dict[str, Any] = {"coresMin": task.cpus}
        if task.memory:
            resources["ramMin"] = max(1, task.memory // 2**20)
        hints.append({"class": "ResourceRequirement", **resources})
        tool["hints"] = hints
        tool["doc"] = f"dagon task {name!r} (runtime {task.runtime})"
        out: dict[str, Any] = {"run": tool, "in": step_in, "out": ["log"]}
        if scatter:
            out["scatter"] = scatter
        return out

    def build(self) -> dict[str, Any]:
        steps = {name: self.step(name) for name in self.graph.order}
        for producer, paths in self.outputs.items():
            step = steps[producer]
            for path, out_id in paths.items():
                glob = bool(_GLOB.search(path))
                step["run"]["outputs"][out_id] = {"type": _FILES if glob else _FILE, "outputBinding": {"glob": path}}
                step["out"].append(out_id)
        leaves = [n for n in self.graph.order if not any(n in d for d in self.graph.deps.values())]
        outputs = {
            f"{_cwl_id(n)}_log": {
                "type": _FILES if n in self.scattered else _FILE,
                "outputSource": f"{_cwl_id(n)}/log",
            }
            for n in leaves
        }
        requirements: list[dict[str, Any]] = [{"class": "InlineJavascriptRequirement"}]
        if self.scattered:
            requirements.append({"class": "ScatterFeatureRequirement"})
        return {
            "cwlVersion": "v1.2",
            "class": "Workflow",
            "id": _cwl_id(self.wf.name),
            "label": self.wf.name,
            "doc": "Exported by dagon (dagon graph --format cwl).",
            "requirements": requirements,
            "inputs": self.inputs,
            "outputs": outputs,
            "steps": {_cwl_id(name): step for name, step in steps.items()},
        }


def to_cwl(workflow: Workflow) -> str:
    """A CWL v1.2 ``Workflow`` document (JSON, which is valid YAML)."""
    return json.dumps(_Cwl(workflow).build(), indent=2) + "\n"


def export(workflows: Sequence[Workflow], fmt: str) -> str:
    if fmt == "dot":
        return to_dot(workflows)
    if fmt == "mermaid":
        return to_mermaid(workflows)
    if fmt == "cwl":
        if len(workflows) != 1:
            names = ", ".join(wf.name for wf in workflows)
            raise ValueError(f"CWL export takes one workflow; choose one of {names} with --workflow")
        return to_cwl(workflows[0])
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
