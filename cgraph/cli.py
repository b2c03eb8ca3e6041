"""The `cgraph` command. Each subcommand is a thin layer over the public API; errors print
one line and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import cgraph
from cgraph.errors import CgraphError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cgraph", description="Inspect, check and draw cgraph models (.pb files).")
    parser.add_argument("--version", action="version", version=f"cgraph {cgraph.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_io_commands(sub)
    _add_onnx_commands(sub)
    _add_render_command(sub)
    return parser


def _add_io_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's inputs, outputs, params, op counts and format version")
    p.add_argument("model", help="a cgraph model file (.pb)")
    p.set_defaults(handler=_info)
    p = sub.add_parser("check", help="validate a model file: exit 0, or print what is wrong and exit 1")
    p.add_argument("model", help="a cgraph model file (.pb)")
    p.set_defaults(handler=_check)


def _info(args: argparse.Namespace) -> int:
    from collections import Counter

    from cgraph.graph import format_shape
    from cgraph.io import read_model

    mf = read_model(args.model, mmap=True)  # shapes and sizes only: no need to read the tensors
    g = mf.graph
    nodes = list(g.nodes.values())
    layout = "plain protobuf" if not mf.payload_bytes else f"{mf.payload_bytes:,} bytes in the payload section"
    print(f"{args.model}: cgraph model {g.name!r}, format version {mf.format_version} "
          f"(readers from version {mf.min_reader_version}), written by {mf.producer}")
    print(f"  {mf.file_bytes:,} bytes ({layout}), {len(nodes)} nodes")

    def section(title: str, rows: list[str]) -> None:
        print(f"{title}:" + ("" if rows else " none"))
        for r in rows:
            print(f"  {r}")

    section("inputs", [f"{n.name}  {format_shape(n.shape)} {n.dtype}" for n in nodes if n.op == "input"])
    section("outputs", [f"{k}  {format_shape(t.shape)} {t.dtype}  (node {t.name})" for k, t in g.outputs.items()])
    params = [n for n in nodes if n.op == "param"]
    total = sum(g.value(n.name).nbytes for n in params)
    section(f"params ({len(params)}, {total:,} bytes)",
            [f"{n.name}  {format_shape(n.shape)} {n.dtype}  {g.value(n.name).nbytes:,} bytes"
             + ("" if n.attrs.get("trainable", True) else "  (not trainable)") for n in params])
    consts = [n for n in nodes if n.op == "constant"]
    print(f"constants: {len(consts)} ({sum(g.value(n.name).nbytes for n in consts):,} bytes)")
    if g.state:
        section("state", [f"{k}  {format_shape(v.shape)} {v.dtype}  {v.nbytes:,} bytes" for k, v in g.state.items()])
    ops = Counter(n.op for n in nodes if not n.is_leaf)
    section("ops", [f"{op}  {k}" for op, k in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))])
    section("metadata", [f"{k}: {v}" for k, v in g.metadata.items()])
    return 0


def _check(args: argparse.Namespace) -> int:
    from cgraph.io import read_model

    mf = read_model(args.model, mmap=True, verify=True)  # every CRC-32, and no tensor copied
    print(f"{args.model}: ok (format version {mf.format_version}, {len(mf.graph)} nodes, "
          f"{mf.file_bytes:,} bytes)")
    return 0


def _add_onnx_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model as ONNX (needs the onnx extra)")
    p.add_argument("model", help="a cgraph model file (.pb)")
    p.add_argument("-o", "--output", help="the ONNX file to write (default: the model's name with .onnx)")
    p.add_argument("--opset", type=int, default=cgraph.onnx.DEFAULT_OPSET,
                   help="the ONNX opset to target (default: %(default)s)")
    p.set_defaults(handler=_export_onnx)
    p = sub.add_parser("import", help="read an ONNX model as a cgraph model (needs the onnx extra)")
    p.add_argument("model", help="an ONNX model file (.onnx)")
    p.add_argument("-o", "--output", help="the cgraph model to write (default: the model's name with .pb)")
    p.set_defaults(handler=_import_onnx)


def _export_onnx(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.output) if args.output else Path(args.model).with_suffix(".onnx")
    g = cgraph.load(args.model)
    model = cgraph.onnx.export(g, out, opset=args.opset)
    print(f"wrote {out}: ONNX opset {args.opset}, {len(model.graph.node)} nodes, "
          f"{len(model.graph.initializer)} initializers")
    return 0


def _import_onnx(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.output) if args.output else Path(args.model).with_suffix(".pb")
    g = cgraph.onnx.load(args.model)
    cgraph.save(g, out)
    print(f"wrote {out}: {len(g)} nodes, inputs {', '.join(g.inputs) or 'none'}, "
          f"outputs {', '.join(g.outputs)}, {len(g.params)} params")
    return 0


def _add_render_command(sub: argparse._SubParsersAction) -> None:
    from cgraph.render import RANKDIRS, RenderOptions

    defaults = RenderOptions()
    p = sub.add_parser("render", help="draw a model with Graphviz (svg, png, pdf, or dot source)")
    p.add_argument("model", help="a cgraph model file (.pb)")
    p.add_argument("-o", "--output", help="the file to write (default: the model's name with .svg, or --format)")
    p.add_argument("--format", metavar="{svg,png,pdf,dot}",  # checked by cgraph.render: one-line error
                   help="the output format (default: from -o's suffix, else svg)")
    p.add_argument("--rankdir", choices=RANKDIRS,
                   help=f"top-down (TB) or left-to-right (LR), or reversed (default: {defaults.rankdir})")
    p.add_argument("--collapse", type=_positive, metavar="DEPTH",
                   help="fold name scopes deeper than DEPTH into one box each (1: every top-level scope)")
    p.add_argument("--max-nodes", type=_positive, metavar="N",
                   help=f"boxes drawn before the graph folds itself (default: {defaults.max_nodes})")
    p.add_argument("--feeds", metavar="FEEDS.npz", help="input values (numpy .npz): label every node with its value")
    p.add_argument("--mode", choices=["forward", "reverse"],
                   help="with --feeds: also each node's tangent (forward) or adjoint (reverse)")
    p.add_argument("--of", help="reverse mode: the output to differentiate (default: the only output)")
    p.add_argument("--wrt", nargs="+", metavar="NAME",
                   help="forward mode: the inputs or params whose tangent is seeded with ones; "
                        "reverse mode: the leaves the backward sweep goes to (default: every float one)")
    p.set_defaults(handler=_render)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return n


def _render(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    import numpy as np

    from cgraph.render import RenderError, RenderOptions, RenderWarning, format_of

    if args.output is None:
        out = Path(args.model).with_suffix("." + (args.format or "svg"))
    else:
        out = Path(args.output)
        if args.format and Path(args.output).suffix and format_of(out) != args.format:
            raise RenderError(f"--format {args.format} does not match the suffix of -o {args.output}")
    fmt = format_of(out, args.format)
    if args.mode and not args.feeds:
        raise RenderError(f"--mode {args.mode} needs --feeds: the input values the sweep starts from")
    feeds = None
    if args.feeds:
        if not Path(args.feeds).is_file():
            raise FileNotFoundError(f"no feeds file {args.feeds}")
        try:
            npz = np.load(args.feeds, allow_pickle=False)
        except (ValueError, EOFError, OSError):  # not numpy's, truncated, or pickled objects
            npz = None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise RenderError(f"cannot read feeds {args.feeds}: not a numpy .npz file of named arrays")
        with npz:
            feeds = {k: npz[k] for k in npz.files}
    given = {"rankdir": args.rankdir, "collapse": args.collapse, "max_nodes": args.max_nodes, "feeds": feeds,
             "mode": args.mode, "of": args.of, "wrt": args.wrt}
    options = RenderOptions(**{k: v for k, v in given.items() if v is not None})
    g = cgraph.load(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RenderWarning)
        cgraph.render(g, out, format=fmt, options=options)
    for w in caught:
        print(f"cgraph render: note: {w.message}", file=sys.stderr)
    print(f"wrote {out}: {fmt}, {len(g)} nodes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except (CgraphError, OSError) as e:
        print(f"cgraph {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
