"""Fails when an executed notebook has an error output or no rich (PNG/HTML) output."""
import json
import sys

path = sys.argv[1]
nb = json.load(open(path))
rich = 0
for i, cell in enumerate(nb["cells"]):
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            sys.exit(f"{path}: cell {i} failed: {out.get('ename')}: {out.get('evalue')}")
        text = "".join(out.get("text", []))
        if "error" in text.lower() and out.get("name") == "stderr" and "error[" in text:
            sys.exit(f"{path}: cell {i} printed a compile error:\n{text}")
        data = out.get("data", {})
        if "image/png" in data or "text/html" in data:
            rich += 1
if rich == 0:
    sys.exit(f"{path}: no image or HTML output")
print(f"{path}: ok, {rich} rich output(s)")
