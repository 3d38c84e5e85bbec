"""Checks an executed notebook: no error output, no compile error, at least one rich (PNG/HTML)
output.

    check_notebook.py EXECUTED.ipynb
    check_notebook.py --strip-timings EXECUTED.ipynb OUT.ipynb
        also writes EXECUTED without per-cell execution timestamps to OUT (what is committed)
"""
import json
import sys

args = sys.argv[1:]
strip = args[:1] == ["--strip-timings"]
if strip:
    args = args[1:]
path = args[0]
nb = json.load(open(path))
rich = 0
for i, cell in enumerate(nb["cells"]):
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            sys.exit(f"{path}: cell {i} failed: {out.get('ename')}: {out.get('evalue')}")
        text = "".join(out.get("text", []))
        if out.get("name") == "stderr" and "error[" in text:
            sys.exit(f"{path}: cell {i} printed a compile error:\n{text}")
        data = out.get("data", {})
        if "image/png" in data or "text/html" in data:
            rich += 1
if rich == 0:
    sys.exit(f"{path}: no image or HTML output")
print(f"{path}: ok, {rich} rich output(s)")
if strip:
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
    with open(args[1], "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"written to {args[1]}")
