#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: fuzz/corpus/<target>/, valid and invalid samples.

Deterministic (no randomness, no clock), so running it again rewrites the same files. The
model-artifact seeds are real artifacts made by `millstream train` on a small generated input;
give the binary with MILLSTREAM_BIN (default: the release build in the shared target dir), or
the model seeds are left as they are.

    python3 fuzz/make_seeds.py

Seeds are small on purpose (the whole corpus stays well under 1 MB): libFuzzer grows the
interesting inputs itself, into a scratch corpus (see scripts/fuzz), not into the repository.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "corpus"
T0 = 1_772_323_200_000  # 2026-03-01T00:00:00Z


def write(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    (d / name).write_bytes(data)


def reading(sensor="line1-pump-00/vibration", ts=T0, value=2.43, **extra):
    obj = {"sensor_id": sensor, "ts": ts, "value": value}
    obj.update(extra)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def json_seeds():
    """Shared by json_reading and kafka_message: one record each."""
    good = {
        "contract": '{"sensor_id": "line1-pump-00/vibration", "asset_id": "line1-pump-00", '
        '"ts": "2026-03-01T00:00:00.000Z", "value": 2.43, "unit": "mm/s"}',
        "epoch_ms": reading(ts=T0),
        "float_ms": '{"sensor_id":"a/b","ts":1.7e12,"value":1}',
        "offset_tz": reading(ts="2026-03-01T01:30:00.1239+01:30"),
        "extra_fields": '{"sensor_id":"a/b","ts":0,"value":-0.5,"x":{"y":[1,2,{"z":null}]},"q":true}',
        "escapes": '{"sensor_id":"a\\/b\\u00e9\\ud83d\\udd25","ts":0,"value":1e-300}',
        "unicode_id": reading(sensor="ライン1/ポンプ-🔥", value=1),
        "nul_in_id": '{"sensor_id":"a\\u0000b","ts":0,"value":1}',
        "null_optionals": '{"sensor_id":"a","ts":0,"value":1,"asset_id":null,"unit":null}',
        "underflow": '{"sensor_id":"a","ts":0,"value":1e-400}',
        "max_ts": '{"sensor_id":"a","ts":253402300799999,"value":1}',
        "whitespace": ' \t\r\n{ "sensor_id" : "a" , "ts" : 0 , "value" : 1 } \n',
        "big_int_value": '{"sensor_id":"a","ts":0,"value":18446744073709551615}',
        "negative_value": '{"sensor_id":"a","ts":0,"value":-9223372036854775808}',
        "escape_in_unknown_field": '{"sensor_id":"a","ts":0,"value":1,"x":"\\u00e9\\n"}',
    }
    bad = {
        "empty": "",
        "blank": "   ",
        "not_json": "not json at all",
        "truncated": '{"sensor_id":"a","ts":0,"value":1',
        "trailing": '{"sensor_id":"a","ts":0,"value":1} x',
        "two_objects": '{"sensor_id":"a","ts":0,"value":1}{"sensor_id":"a","ts":0,"value":1}',
        "duplicate_key": '{"sensor_id":"a","sensor_id":"b","ts":0,"value":1}',
        "array": "[1,2,3]",
        "string": '"reading"',
        "number": "42",
        "null": "null",
        "empty_object": "{}",
        "missing_value": '{"sensor_id":"a","ts":0}',
        "id_number": '{"sensor_id":7,"ts":0,"value":1}',
        "ts_bool": '{"sensor_id":"a","ts":true,"value":1}',
        "value_string": '{"sensor_id":"a","ts":0,"value":"1.5"}',
        "value_null": '{"sensor_id":"a","ts":0,"value":null}',
        "unit_number": '{"sensor_id":"a","ts":0,"value":1,"unit":5}',
        "nan": '{"sensor_id":"a","ts":0,"value":NaN}',
        "neg_infinity": '{"sensor_id":"a","ts":0,"value":-Infinity}',
        "nan_string": '{"sensor_id":"a","ts":0,"value":"NaN"}',
        "beyond_f64": '{"sensor_id":"a","ts":0,"value":1e999}',
        "beyond_f64_int": '{"sensor_id":"a","ts":0,"value":1' + "0" * 400 + "}",
        "ts_beyond_f64": '{"sensor_id":"a","ts":1e400,"value":1}',
        "ts_beyond_u64": '{"sensor_id":"a","ts":18446744073709551616,"value":1}',
        "ts_words": '{"sensor_id":"a","ts":"yesterday","value":1}',
        "ts_negative": '{"sensor_id":"a","ts":-1,"value":1}',
        "ts_fraction": '{"sensor_id":"a","ts":1.5,"value":1}',
        "ts_feb_30": '{"sensor_id":"a","ts":"2026-02-30T00:00:00Z","value":1}',
        "ts_year_10000": '{"sensor_id":"a","ts":253402300800000,"value":1}',
        "ts_pre_epoch": '{"sensor_id":"a","ts":"1969-12-31T23:59:59Z","value":1}',
        "empty_id": '{"sensor_id":"","ts":0,"value":1}',
        "blank_id": '{"sensor_id":"  ","ts":0,"value":1}',
        "unicode_blank_id": '{"sensor_id":"\\u3000\\u2003\\u00a0","ts":0,"value":1}',
        "lone_surrogate": '{"sensor_id":"\\ud800","ts":0,"value":1}',
        "deep_array": "[" * 300 + "]" * 300,
        "deep_array_800": "[" * 800 + "]" * 800,
        "array_reading_like": '["a/b",0,x]',
        "deep_in_field": '{"sensor_id":"a","ts":0,"value":1,"x":' + "[" * 200 + "]" * 200 + "}",
        "deep_in_value": '{"sensor_id":"a","ts":0,"value":' + "[" * 200 + "]" * 200 + "}",
        "deep_objects": '{"a":' * 150 + "1" + "}" * 150,
        "unclosed": "[" * 500,
    }
    raw = {
        "invalid_utf8_id": b'{"sensor_id":"a\xff\xfeb","ts":0,"value":1}',
        "invalid_utf8_field": b'{"sensor_id":"a","ts":0,"value":1,"x":"\xc3\x28"}',
        "invalid_utf8_key": b'{"sensor_id":"a","ts":0,"value":1,"\xed\xa0\x80":1}',
        "overlong_utf8": b'{"sensor_id":"\xc0\xaf","ts":0,"value":1}',
        "bom": b'\xef\xbb\xbf{"sensor_id":"a","ts":0,"value":1}',
        "random_bytes": bytes((i * 151 + 7) % 256 for i in range(64)),
    }
    return good, bad, raw


CSV_ROWS = {
    "row_contract": "line1-pump-00/vibration,1772323200000,2.43,line1-pump-00,mm/s",
    "row_rfc3339": "a/b,2026-03-01T00:00:00Z,1,,",
    "row_quoted": '"pump,1/temp",2026-03-01T00:00:00.5+01:00,-3.5,"pump,1","deg""C"',
    "row_too_few": "a,0,1",
    "row_too_many": "a,0,1,b,c,d",
    "row_empty_id": ",0,1,,",
    "row_empty_ts": "a,,1,,",
    "row_bad_ts": "a,soon,1,,",
    "row_bad_value": "a,0,abc,,",
    "row_nan": "a,0,NaN,,",
    "row_inf": "a,0,inf,,",
    "row_open_quote": '"a,0,1,,',
    "row_ts_overflow": "a,99999999999999999999999999999999999999999,1,,",
    "row_beyond_f64": "a,0,1e999,,",
    "row_unicode": "\u30dd\u30f3\u30d7/\u632f\u52d5,0,1,,",
    "row_blank_id": "\"   \",0,1,,",
}


def csv_seeds():
    header = "sensor_id,ts,value,asset_id,unit\n"
    rows = {name: header + row + "\n" for name, row in CSV_ROWS.items()}
    return rows | {
        "rows": header
        + "line1-pump-00/vibration,1772323200000,2.43,line1-pump-00,mm/s\n"
        + "a/b,2026-03-01T00:00:00Z,1,,\n"
        + '"pump,1/temp",2026-03-01T00:00:00.5+01:00,-3.5,"pump,1","deg""C"\n'
        + "a,0,1\n"
        + "a,0,1,b,c,d\n"
        + ",0,1,,\n"
        + "a,,1,,\n"
        + "a,soon,1,,\n"
        + "a,0,abc,,\n"
        + "a,0,NaN,,\n"
        + "a,0,inf,,\n"
        + '"a,0,1,,\n'
        + "a,99999999999999999999999999999999999999999,1,,\n"
        + "a,0,1e999,,\n",
        "reordered": "TS , Value,Sensor_ID,extra\r\n2026-03-01T00:00:00Z,2.5,p/t,x\r\n1,2,q,\r\n",
        "quoted_header": '"sensor_id","ts","value"\n"a\tb",0,1\n"\xc3\xa9/\xe2\x82\xac",1,2\n',
        "duplicate_column": "sensor_id,ts,value,ts\na,0,1,0\n",
        "missing_column": "sensor_id,value\na,1\n",
        "only_header": "sensor_id,ts,value\n",
        "crlf_values": "sensor_id,ts,value\r\na,0,1\r\nb,1,2\r\n",
    }


def timestamp_seeds():
    import struct

    seeds = {
        "contract": "2026-03-01T00:00:00.000Z",
        "offset": "2026-03-01T01:30:00.1239+01:30",
        "lower_t": "2026-03-01t00:00:00z",
        "space": "2026-03-01 00:00:00Z",
        "max": "9999-12-31T23:59:59.999Z",
        "year_10000": "+10000-01-01T00:00:00Z",
        "pre_epoch": "1969-12-31T23:59:59Z",
        "leap_second": "2016-12-31T23:59:60Z",
        "feb_29": "2024-02-29T00:00:00Z",
        "feb_30": "2026-02-30T00:00:00Z",
        "nanos": "2026-03-01T00:00:00.123456789Z",
        "many_digits": "2026-03-01T00:00:00." + "9" * 40 + "Z",
        "neg_offset": "1970-01-01T00:00:00-23:59",
        "epoch_json": "1772323200000",
        "float_json": "1.7e12",
        "quoted_json": '"2026-03-01T00:00:00Z"',
        "negative_json": "-1",
        "garbage": "yesterday",
        "date_only": "2026-03-01",
        "no_offset": "2026-03-01T00:00:00",
        "comma_fraction": "2026-03-01T00:00:00,5Z",
        "fullwidth_digits": "\uff12\uff10\uff12\uff16-03-01T00:00:00Z",
        "max_offset": "2026-03-01T00:00:00+99:99",
    }
    for name, ms, f in [
        ("bits_zero", 0, 0.0),
        ("bits_max", 253_402_300_799_999, 253_402_300_799_999.0),
        ("bits_over", 253_402_300_800_000, 1.5),
        ("bits_negative", -1, float("nan")),
        ("bits_inf", 2**100, float("inf")),
    ]:
        low = struct.pack("<d", f) + struct.pack("<Q", ms & (2**64 - 1))
        seeds[name] = low
    return seeds


def registry_seeds():
    example = (Path(__file__).resolve().parent.parent / "config/examples/sensors.toml").read_text()
    # The example is a configuration file: its [validation] section is the registry's shape.
    section = example.replace("[validation]", "").replace("[[validation.kinds]]", "[[kinds]]")
    section = section.replace("[[validation.sensors]]", "[[sensors]]")
    return {
        "example": section,
        "empty": "",
        "off": 'max_future_ms = "off"\n',
        "string_ms": 'max_future_ms = "1000"\n',
        "negative_ms": "max_future_ms = -1\n",
        "minimal_kind": '[[kinds]]\nname = "vibration"\nmax = 50.0\n',
        "nan_limit": '[[kinds]]\nname = "v"\nmin = nan\n',
        "inf_rate": '[[kinds]]\nname = "v"\nmax_rate_per_s = inf\n',
        "empty_range": '[[kinds]]\nname = "v"\nmin = 5\nmax = 5\n',
        "slash_name": '[[kinds]]\nname = "a/b"\n',
        "ambiguous": '[[kinds]]\nname = "a"\naliases = ["b"]\n[[kinds]]\nname = "b"\n',
        "unknown_kind": '[[sensors]]\nsensor_id = "p/x"\nkind = "nope"\n',
        "override": '[[kinds]]\nname = "t"\nunit = "degC"\nmin = -40\nmax = 150\nrange_action = "flag"\n'
        'max_rate_per_s = 2\nrate_action = "reject"\n[[sensors]]\nsensor_id = "p/t"\nmax = 200\n'
        'rate_action = "flag"\n',
        "unknown_field": '[[kinds]]\nname = "t"\nmaximum = 3\n',
        "bad_action": '[[kinds]]\nname = "t"\nrange_action = "drop"\n',
        "inline_tables": 'kinds = [{name = "t", min = 0, max = 1}]\nsensors = [{sensor_id = "a/t", min = -1}]\n',
        "empty_unit": '[[kinds]]\nname = "t"\nunit = " "\n',
        "negative_rate": '[[kinds]]\nname = "t"\nmax_rate_per_s = -1\n',
        "override_only": '[[sensors]]\nsensor_id = "lonely"\nmin = 0\nmax = 1\n',
        "duplicate_sensor": '[[sensors]]\nsensor_id = "a"\n[[sensors]]\nsensor_id = "a"\n',
        "unicode_names": '[[kinds]]\nname = "振動"\naliases = ["вибрация"]\nunit = "mm/s"\n',
        "nested_arrays": "kinds = [[[[[[[[]]]]]]]]\n",
        "huge_ms": "max_future_ms = 18446744073709551615\n",
    }


def model_seeds(out):
    """Artifacts from `millstream train`; each as raw bytes (mode 0) and as a body (mode 1)."""
    binary = os.environ.get(
        "MILLSTREAM_BIN", str(Path.home() / ".cache/millstream/target/release/millstream")
    )
    if not Path(binary).exists():
        print(f"make_seeds: no {binary}; model seeds left as they are", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = []
        for i in range(300):
            for s, base in [("vibration", 2.0), ("temperature", 60.0), ("flow", 10.0)]:
                v = base + math.sin(i / 7.0 + len(s)) * 0.3 + (i % 13) * 0.01
                lines.append(reading(sensor=f"pump-00/{s}", ts=T0 + i * 1000, value=round(v, 4)))
        (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
        store = f"file://{tmp}/store"
        runs = {
            "kmeans": [],
            "single": ["--k", "1", "--smoothing", "1", "--features", "vibration"],
            "rate": ["--k", "2", "--rate-of", "flow", "--rate-lag", "5", "--smoothing", "3"],
        }
        shutil.rmtree(out, ignore_errors=True)
        for name, extra in runs.items():
            subprocess.run(
                [binary, "train", "--input", f"file:{tmp}/train.jsonl", "--name", name, "--store", store]
                + extra,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            artifact = next((tmp / "store" / name).glob("*.model")).read_bytes()
            write("model_artifact", f"{name}_raw", b"\x00" + artifact)
            write("model_artifact", f"{name}_body", b"\x01" + artifact[17:])
            if name == "single":
                flipped = bytearray(artifact)
                flipped[-1] ^= 0x40
                write("model_artifact", "single_flipped", b"\x00" + bytes(flipped))
                write("model_artifact", "single_truncated", b"\x00" + artifact[:-1])
                v1 = bytearray(artifact)
                v1[7:9] = (1).to_bytes(2, "little")
                write("model_artifact", "single_version_1", b"\x00" + bytes(v1))
            if name == "kmeans":
                body = artifact[17:]
                for at in [0, 1, 7, 40, len(body) // 2, len(body) - 9]:
                    flipped = bytearray(body)
                    flipped[at] ^= 0xFF
                    write("model_artifact", f"kmeans_body_flipped_{at}", b"\x01" + bytes(flipped))
                write("model_artifact", "kmeans_body_half", b"\x01" + body[: len(body) // 2])
                v4 = bytearray(artifact)
                v4[7:9] = (4).to_bytes(2, "little")
                write("model_artifact", "kmeans_version_4", b"\x00" + bytes(v4))
                long = bytearray(artifact)
                long[9:13] = (len(body) + 1).to_bytes(4, "little")
                write("model_artifact", "kmeans_length_mismatch", b"\x00" + bytes(long))
    write("model_artifact", "bad_magic", b"\x00XSMODEL\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    write("model_artifact", "empty_body", b"\x01")


def main():
    good, bad, raw = json_seeds()
    for target in ["json_reading", "kafka_message"]:
        shutil.rmtree(ROOT / target, ignore_errors=True)
        for kind, seeds in [("ok", good), ("bad", bad), ("raw", raw)]:
            for name, data in seeds.items():
                write(target, f"{kind}_{name}", data)
    for target, seeds in [
        ("csv_reading", csv_seeds()),
        ("timestamp", timestamp_seeds()),
        ("sensor_registry", registry_seeds()),
    ]:
        shutil.rmtree(ROOT / target, ignore_errors=True)
        for name, data in seeds.items():
            write(target, name, data)
    model_seeds(ROOT / "model_artifact")
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    files = sum(1 for f in ROOT.rglob("*") if f.is_file())
    print(f"make_seeds: {files} files, {total} bytes under {ROOT}")


if __name__ == "__main__":
    main()
