#!/usr/bin/python3
"""Writes a job's per-round figures as rounds.csv and a chart, rounds.png.

    plot_rounds.py [--title TITLE] --out DIR LOG [LOG ...]

Reads the per-round lines the training examples print:

    round R  train_loss L  test_acc A  bytes B  secs S     (weightd_worker --eval)
    round R  train_loss L  test_acc(2000) A  secs S        (fedavg_cnn.py)
    cnn       round R  train_loss L  test_acc(2000) A  secs S
                                                           (cnn_rnn_share.py: one
                                                            series per model)

and every other line is ignored. rounds.csv has a column per field, in the
log's order, holding the numbers exactly as the log printed them (a leading
`model` column when the lines name their model; `test_acc(2000)` becomes
`test_acc_2000`). rounds.png plots test accuracy and train loss per round,
one line per model. Exits 1 with one line on stderr, and writes nothing,
when the logs hold no per-round line or matplotlib is missing.

Run it with Debian's /usr/bin/python3 (python3-matplotlib:
scripts/install_deps.sh demo).
"""

import argparse
import csv
import os
import pathlib
import re
import sys
import tempfile

# "[MODEL ]round R  FIELDS": MODEL starts with a letter; FIELDS is the rest.
ROUND_LINE = re.compile(
    r"(?:(?P<model>[A-Za-z][\w ]*?)\s+)?round\s+(?P<round>\d+)\s+(?P<fields>.*?)\s*")
# One field: "name value" or "name(note) value".
FIELD = re.compile(
    r"(?P<name>[a-z_]+)(?:\((?P<note>\w+)\))?\s+(?P<value>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))\s*")
# "[MODEL ]final test accuracy: A"
FINAL_LINE = re.compile(
    r"(?:(?P<model>[A-Za-z][\w ]*?)\s+)?final test accuracy: (?P<value>[0-9.]+)\s*")
NEEDED = ("train_loss", "test_acc")


class NoRounds(Exception):
    """The logs hold no per-round line."""


def parse_fields(text):
    """The fields of a round line's remainder as [(column, value)], or None
    if it is not entirely fields or lacks train_loss or test_acc."""
    fields, pos = [], 0
    while pos < len(text):
        m = FIELD.match(text, pos)
        if m is None:
            return None
        column = m["name"] + (f"_{m['note']}" if m["note"] else "")
        fields.append((column, m["value"]))
        pos = m.end()
    columns = [c for c, _ in fields]
    if not all(any(c == n or c.startswith(n + "_") for c in columns)
               for n in NEEDED):
        return None
    return fields


def read_logs(paths):
    """Returns (rows, columns, finals): rows are dicts in log order (key
    "model" only when the line names one), columns every key in order of
    first appearance, finals {model or "": final test accuracy}."""
    rows, columns, finals = [], [], {}
    for path in paths:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                final = FINAL_LINE.fullmatch(line)
                if final:
                    finals[(final["model"] or "").strip()] = final["value"]
                    continue
                m = ROUND_LINE.fullmatch(line)
                if m is None:
                    continue
                fields = parse_fields(m["fields"])
                if fields is None:
                    continue
                row = {"round": m["round"], **dict(fields)}
                if m["model"]:
                    row["model"] = m["model"].strip()
                rows.append(row)
                for key in row:
                    if key not in columns:
                        columns.append(key)
    if not rows:
        raise NoRounds()
    # model, round, then the fields as the log orders them.
    columns.sort(key=lambda c: {"model": 0, "round": 1}.get(c, 2))
    return rows, columns, finals


def write_atomically(path, write, **mode):
    """Calls write(file object) on a temporary file beside ``path`` (opened
    with ``mode``, default binary), then renames it to ``path``: a reader
    never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, **(mode or {"mode": "wb"})) as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is not what a chart needs.
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_csv(path, rows, columns):
    def write(f):
        writer = csv.DictWriter(f, fieldnames=columns, restval="",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_atomically(path, write, mode="w", newline="")


def write_chart(path, rows, columns, finals, title, pyplot, ticker):
    acc_column = next(c for c in columns if c.startswith("test_acc"))
    acc_label = "test accuracy"
    if acc_column != "test_acc":
        acc_label += f"\n(first {acc_column[len('test_acc_'):]} test images)"
    models = list(dict.fromkeys(r.get("model", "") for r in rows))
    figure, (acc_axes, loss_axes) = pyplot.subplots(
        2, 1, sharex=True, figsize=(8, 6.5), constrained_layout=True)
    for model in models:
        mine = [r for r in rows if r.get("model", "") == model]
        rounds = [int(r["round"]) for r in mine]
        label = model or None
        if model and model in finals:
            label = f"{model} (final {finals[model]})"
        acc = [float(r[acc_column]) if r.get(acc_column) else float("nan")
               for r in mine]
        loss = [float(r["train_loss"]) for r in mine]
        acc_axes.plot(rounds, acc, marker="o", markersize=3, label=label)
        loss_axes.plot(rounds, loss, marker="o", markersize=3, label=label)
    if "" in finals and models == [""]:
        title += f"\nfinal test accuracy {finals['']}"
    acc_axes.set_title(title)
    acc_axes.set_ylabel(acc_label)
    loss_axes.set_ylabel("train loss\n(mean over the round's local steps)")
    loss_axes.set_xlabel("round")
    loss_axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    for axes in (acc_axes, loss_axes):
        axes.grid(True, alpha=0.3)
        if models != [""]:
            axes.legend()
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100))
    pyplot.close(figure)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="a worker's output with per-round lines")
    parser.add_argument("--out", required=True, type=pathlib.Path,
                        help="directory for rounds.csv and rounds.png")
    parser.add_argument("--title", default="weightd job",
                        help="the chart's title (default: %(default)s)")
    args = parser.parse_args()
    program = "plot_rounds"
    try:
        rows, columns, finals = read_logs(args.logs)
    except NoRounds:
        sys.exit(f"{program}: no per-round lines ('round R  train_loss L  "
                 f"test_acc A ...') in {' '.join(args.logs)}; wrote nothing")
    except OSError as e:
        sys.exit(f"{program}: {e}")
    try:
        import matplotlib
        matplotlib.use("Agg")  # No display.
        from matplotlib import pyplot, ticker
    except ImportError:
        sys.exit(f"{program}: matplotlib is missing (install python3-matplotlib: "
                 "scripts/install_deps.sh demo); wrote nothing")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(args.out / "rounds.csv", rows, columns)
        write_chart(args.out / "rounds.png", rows, columns, finals, args.title,
                    pyplot, ticker)
    except OSError as e:
        sys.exit(f"{program}: {e}")


if __name__ == "__main__":
    main()
