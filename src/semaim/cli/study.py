"""``semaim study payoff`` / ``semaim study orders``: many runs on your data, one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .vocabulary import add_data, add_progress, add_set, helped


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="studies that answer a question with many runs and write a report")
    studies = p.add_subparsers(dest="study", required=True)
    q = studies.add_parser(
        "payoff", help="fine-tuning from semaim encoders vs from scratch, against labels, with floors"
    )
    add_study_arguments(q, "payoff", "study.finetune=[epochs=20,batch_size=32]")
    q = studies.add_parser(
        "orders",
        help="which order is best on my data: every order (and the plan's variants) pretrained, then fine-tuned, "
        "frozen and (with masks) segmented; also writes the payoff report of its scratch/semantic/raster runs",
    )
    add_study_arguments(q, "orders", "study.seeds=[0,1]")


def add_study_arguments(p: argparse.ArgumentParser, kind: str, example: str) -> None:
    """The flags every study shares: data, quick, seeds, study folder, report folder (``kind``-DATA.md), --set."""
    add_data(p, "with train/ and val/ class sub-folders for a folder", "fashion-mnist")
    p.add_argument("--quick", action="store_true", help="a tiny smoke test of the whole pipeline")
    p.add_argument(
        "--seeds", type=int, help="how many seeds (0, 1, ...) per configuration [default: 3; --quick: 2]"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help=helped(
            "--out",
            "the study folder; rerun to resume; several processes on one folder share its runs",
            f"runs/{kind}-DATA[-quick]",
        ),
    )
    p.add_argument("--report-dir", help=f"where {kind}-DATA.md and .png go [default: the study folder]")
    p.add_argument(
        "--only-seeds", type=int, nargs="+", help="run only these seeds' runs now (the rest on a rerun)"
    )
    p.add_argument(
        "--deadline",
        help="start only the runs expected to end by then (+90m, +2h30m, HH:MM (the next one), "
        "YYYY-MM-DDTHH:MM), from the finished runs of the same kind; the rest on a rerun [default: none]",
    )
    add_set(p, example)
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    from ..study.payoff import (
        PayoffConfig,
        payoff_plan,
        plot_payoff,
        run_payoff,
        settle_precision,
        write_payoff_report,
    )

    if args.study == "orders":
        from ..study.orders import orders_plan, plot_orders, write_orders_report

        cfg = PayoffConfig(orders_plan(args.data or "fashion-mnist", args.quick, args.seeds))
        plot, report = plot_orders, write_orders_report
    else:
        cfg = PayoffConfig(payoff_plan(args.data or "fashion-mnist", args.quick, args.seeds))
        plot, report = plot_payoff, write_payoff_report
    return run_a_study(
        args, args.study, cfg, run=run_payoff, plot=plot, report=report, settle=settle_precision
    )


def run_a_study(args: argparse.Namespace, kind: str, cfg, *, run, plot, report, settle=None) -> int:
    """Plan (with --set; ``settle(plan, folder)`` fixes what the folder's study has recorded), run (resumable),
    chart, report (``kind``-DATA.md), and the per-run rows beside the report."""
    from ..config import parse_assignment
    from ..study.runner import parse_deadline

    for assignment in args.set:
        cfg.set(*parse_assignment(assignment))
    args.data = args.data or "fashion-mnist"
    name = args.data.split(":", 1)[0].rstrip("/").split("/")[-1]
    folder = Path(args.out or f"runs/{kind}-{name}{'-quick' if args.quick else ''}")
    plan = cfg.validate().study
    plan = settle(plan, folder) if settle else plan  # e.g. the precision the runs use, for the report too
    deadline = None if args.deadline is None else parse_deadline(args.deadline)  # '' is refused by name
    rows = run(plan, folder, progress=not args.no_progress, only_seeds=args.only_seeds, deadline=deadline)
    report_dir = Path(args.report_dir or folder)
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}-{name}"
    chart, markdown = report_dir / f"{stem}.png", report_dir / f"{stem}.md"
    plot(rows, plan, chart)
    command = f"semaim study {kind} --data {args.data}" + " --quick" * args.quick
    command += f" --seeds {args.seeds}" * bool(args.seeds) + f" --out {args.out}" * bool(args.out)
    command += f" --report-dir {args.report_dir}" * bool(args.report_dir)
    report(rows, plan, command + "".join(f" --set {a}" for a in args.set), markdown, chart)
    if report_dir.resolve() != folder.resolve():  # keep the per-run rows beside the report
        (report_dir / f"{stem}.jsonl").write_text((folder / "results.jsonl").read_text())
    print(f"wrote {markdown} and {chart}")
    return 0
