"""An outside reader of the click archive: pyarrow, nothing of ours.

Usage: read_parquet.py ROOT
Reads every manifest under ROOT/archive/manifest/, reads every file the manifests list (files
they do not list are not part of the archive), and prints one JSON object: files, rows, the
sum of campaign_id, and the Arrow types pyarrow sees for click_id and event_time_ms.
"""

import json
import pathlib
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq


def main(root: pathlib.Path) -> None:
    files = rows = campaign_id_sum = 0
    types = {}
    for manifest_path in sorted((root / "archive" / "manifest").glob("*.json")):
        manifest = json.loads(manifest_path.read_text())
        for segment in manifest["segments"]:
            for entry in segment["files"]:
                table = pq.ParquetFile(root / entry["key"]).read(
                    columns=["click_id", "campaign_id", "event_time_ms"]
                )
                if table.num_rows != entry["rows"]:
                    sys.exit(f"{entry['key']}: {table.num_rows} rows, manifest says {entry['rows']}")
                files += 1
                rows += table.num_rows
                campaign_id_sum += pc.sum(table["campaign_id"]).as_py() or 0
                types = {name: str(table.schema.field(name).type) for name in table.column_names}
    print(json.dumps({"files": files, "rows": rows, "campaign_id_sum": campaign_id_sum, "types": types}))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
