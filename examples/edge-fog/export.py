"""Task C of the edge-fog scenario: store the preprocessed summary (and the raw readings) in MongoDB.

    python export.py SUMMARY_JSON READINGS_JSONL --mongo URI --execution ID [--database D --collection C]

Exits non-zero when the insert fails — the original printed its error and still reported success.
Writes ``export.json`` (what was stored, and where) for the workflow's record.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("summary", type=Path)
    p.add_argument("readings", type=Path)
    p.add_argument("--mongo", required=True)
    p.add_argument("--execution", required=True)
    p.add_argument("--database", default="dagon_edge_fog")
    p.add_argument("--collection", default="dht_runs")
    args = p.parse_args(argv)
    from pymongo import MongoClient

    summary = json.loads(args.summary.read_text())
    raw = [json.loads(line) for line in args.readings.read_text().splitlines() if line.strip()]
    document = {
        "execution_id": args.execution,
        "workflow": "DHT-Sensor-Capture-And-Preprocess",
        "export_timestamp": datetime.now(UTC),
        "summary": summary,
        "raw": raw,
        "raw_data_count": len(raw),
    }
    with MongoClient(args.mongo, serverSelectionTimeoutMS=5000) as client:
        collection = client[args.database][args.collection]
        result = collection.replace_one({"execution_id": args.execution}, document, upsert=True)  # re-runs replace
    Path("export.json").write_text(json.dumps({"database": args.database, "collection": args.collection,
                                               "execution_id": args.execution, "records": len(raw),
                                               "upserted": result.upserted_id is not None}) + "\n")  # fmt: skip
    sys.stdout.write(f"stored {len(raw)} readings of {args.execution} in {args.database}.{args.collection}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
