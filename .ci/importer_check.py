"""Reads an exporter's bucket back exactly as OpenCTI's stock stream-importer does.

See docs/opencti-protocol.md#importer-listing and docs/opencti-protocol.md#importer-processing:
list the source path recursively with the minio client (which sends an
empty `delimiter=`), in the order S3 returns (lexicographic, no sorting), skip keys ending in
`/`, parse the file number as `int(key.split("_")[-1].split(".")[0])`, require it to be the
previous number + 1, decode the body as UTF-8, split on "\n", skip empty lines and `json.loads`
each line. Prints a JSON summary; exits 1 on any problem the importer would stop on.

With --expect-ids, the events read must be exactly those the simulator served, in order. With
--no-loss as well (an exporter was killed and restarted: the simulator served again the events
that were not yet durable), every event served must have been read and every event read must have
been served; events read twice are counted, not refused.

Usage: importer_check.py ENDPOINT ACCESS_KEY SECRET_KEY SRC_PATH [--expect-ids FILE [--no-loss]]
"""

import json
import sys

from minio import Minio


def main() -> int:
    endpoint, access_key, secret_key, src_path = sys.argv[1:5]
    expect_file = None
    if "--expect-ids" in sys.argv:
        expect_file = sys.argv[sys.argv.index("--expect-ids") + 1]
    bucket, _, path = src_path.partition("/")
    client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False)

    file_count = 0
    lines = 0
    events = []
    problems = []
    for obj in client.list_objects(bucket, prefix=path, recursive=True):
        key = obj.object_name
        if key.endswith("/"):
            continue
        number = int(key.split("_")[-1].split(".")[0])
        expected = file_count + 1
        if number != expected:
            problems.append(f"File {key} is not in correct order, should be number {expected}.")
            break
        response = client.get_object(bucket, key)
        try:
            body = response.read().decode("utf-8")
        finally:
            response.close()
            response.release_conn()
        for line in body.split("\n"):
            if line == "":
                continue
            lines += 1
            try:
                content = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{key}: line {lines} is not JSON: {err}")
                continue
            if not isinstance(content, dict) or "type" not in content or "data" not in content:
                problems.append(f"{key}: line {lines} lacks type or data")
                continue
            events.append([content.get("id"), content["type"], content["data"].get("id")])
        file_count = expected

    types = {}
    for _, kind, _ in events:
        types[kind] = types.get(kind, 0) + 1
    summary = {"files": file_count, "lines": lines, "types": types, "problems": problems[:10]}
    if expect_file is not None:
        with open(expect_file, encoding="utf-8") as handle:
            expected_events = json.load(handle)
        summary["expected"] = len(expected_events)
        if "--no-loss" in sys.argv:
            read = {tuple(event) for event in events}
            served = {tuple(event) for event in expected_events}
            summary["expected"] = len(served)
            summary["read_twice"] = len(events) - len(read)
            missing = [event for event in dict.fromkeys(map(tuple, expected_events)) if event not in read]
            unknown = [event for event in dict.fromkeys(map(tuple, events)) if event not in served]
            if missing:
                problems.append(f"{len(missing)} events served were not read, e.g. {missing[:2]}")
            if unknown:
                problems.append(f"{len(unknown)} events read were never served, e.g. {unknown[:2]}")
            summary["problems"] = problems[:10]
        elif events != expected_events:
            first = next(
                (i for i, (a, b) in enumerate(zip(events, expected_events)) if a != b),
                min(len(events), len(expected_events)),
            )
            problems.append(
                f"events differ from what the simulator served at index {first}: "
                f"got {events[first:first + 2]}, expected {expected_events[first:first + 2]}"
            )
            summary["problems"] = problems[:10]
    print(json.dumps(summary))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
