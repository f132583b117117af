"""Importers on real HH-RLHF rows (tests/data, with its attribution) and on synthetic files
of every other format, every bad-input case counted with its reason; and the convert command."""
import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignray.data.prompts import read_demonstrations, read_prompts, render_conversation
from alignray.feedback.schema import read_feedback, read_feedback_files
from alignray.importers import ImportOptions, import_file
from alignray.workflows import convert

HH_EXCERPT = Path(__file__).parent / "data" / "hh_rlhf_excerpt.jsonl"
HH_LINES = HH_EXCERPT.read_text().splitlines()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def reasons_by_row(imported) -> dict[int, str]:
    return {error.row: error.message for error in imported.report.errors}


def test_hh_excerpt_keeps_multi_turn_prompts_and_rejects_the_bad_rows():
    imported = import_file(HH_EXCERPT, "hh-rlhf")
    report = imported.report
    assert (report.rows_in, report.accepted, report.rejected) == (30, 28, 2)
    assert report.reasons == {"empty response": 1, "prompts differ": 1}
    assert set(reasons_by_row(imported)) == {28, 29}  # rows 56 and 836 of the shared file
    assert len(imported.feedback) == len(imported.demonstrations) == 28
    # Row 0 has two human turns: its conversation is the transcript up to the last answer.
    first = json.loads(HH_LINES[0])
    pair = imported.feedback[0]
    conversation = pair["conversation"]
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    assert first["chosen"].startswith("\n\nHuman: " + conversation[0]["content"])
    assert first["chosen"].endswith(imported.demonstrations[0]["response"])
    assert pair["prompt"] == render_conversation(conversation)
    chosen_answer = first["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()
    assert pair["responses"][{"a": 0, "b": 1}[pair["winner"]]] == chosen_answer
    assert {row["winner"] for row in imported.feedback} == {"a", "b"}  # position does not give it away
    assert all(row["source"] == "human" for row in imported.feedback)


def test_hh_transcripts_without_the_leading_blank_line_import_alike(tmp_path):
    """Copies of HH-RLHF often drop the blank line before the first "Human:": the same rows,
    so the same pairs; text before the first turn is still refused."""
    rows = [json.loads(line) for line in HH_LINES[:5]]
    stripped = [{key: row[key].removeprefix("\n\n") for key in ("chosen", "rejected")} for row in rows]
    assert all(row["chosen"].startswith("Human:") for row in stripped)
    as_shared = import_file(write_jsonl(tmp_path / "a.jsonl", rows), "hh-rlhf")
    without = import_file(write_jsonl(tmp_path / "b.jsonl", stripped), "hh-rlhf")
    assert without.report.accepted == as_shared.report.accepted == 5
    assert [r["conversation"] for r in without.feedback] == [r["conversation"] for r in as_shared.feedback]
    preamble = [{key: "Hello. " + value for key, value in stripped[0].items()}]
    refused = import_file(write_jsonl(tmp_path / "c.jsonl", preamble), "hh-rlhf")
    assert refused.report.reasons == {"bad conversation": 1}


def test_gzip_and_truncated_gzip(tmp_path):
    whole = tmp_path / "hh.jsonl.gz"
    whole.write_bytes(gzip.compress(HH_EXCERPT.read_bytes()))
    assert import_file(whole, "hh-rlhf").report.accepted == 28
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    report = import_file(cut, "hh-rlhf").report
    assert report.reasons["truncated gzip"] == 1 and 0 < report.accepted < 28
    assert report.rows_in == report.accepted + report.rejected
    assert "compressed stream ends early" in str(report.errors[-1])


def test_bad_lines_are_rejected_with_their_reason(tmp_path):
    good = json.loads(HH_LINES[1])
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(good).encode(), b'{"chosen": "\xff\xfe broken"}', b"{not json", b"[1, 2]",
             json.dumps({"chosen": good["chosen"]}).encode(),
             json.dumps({"chosen": 7, "rejected": good["rejected"]}).encode(),
             json.dumps({"chosen": good["chosen"], "rejected": good["chosen"]}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    imported = import_file(path, "hh-rlhf")
    assert (imported.report.rows_in, imported.report.accepted) == (7, 1)
    assert imported.report.reasons == {"bad UTF-8": 1, "bad JSON": 1, "wrong type": 2, "missing field": 1,
                                       "identical responses": 1}
    assert "field 'rejected': missing field" in str(imported.report.errors[3])


def test_preference_formats_text_messages_and_implicit_prompt(tmp_path):
    rows = [
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
         "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": [{"role": "assistant", "content": "Go."}]},
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"},
                    {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "4, sorry."}],
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"},
                      {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes, 5."}]},
        {"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
         "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}]},
        {"prompt": "Q", "chosen": "  ", "rejected": "fine"},
        {"prompt": "Q", "chosen": [{"role": "robot", "content": "x"}], "rejected": "fine"},
        {"prompt": 3, "chosen": "a", "rejected": "b"},
    ]
    imported = import_file(write_jsonl(tmp_path / "pairs.jsonl", rows), "preference")
    assert (imported.report.accepted, imported.report.rejected) == (3, 4)
    assert imported.report.reasons == {"prompts differ": 1, "empty response": 1, "bad conversation": 1,
                                       "wrong type": 1}
    system_prompt = imported.prompts[1]
    assert system_prompt["system"] == "Be brief."
    assert system_prompt["conversation"] == [{"role": "user", "content": "Hi?"}]
    implicit = imported.demonstrations[2]
    assert implicit["response"] == "4, sorry." and len(implicit["conversation"]) == 3
    assert implicit["prompt"] == "Human: 2+2?\n\nAssistant: 5\n\nHuman: Sure?\n\nAssistant:"


def test_preference_pairs_from_parquet_and_csv(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "Dunno."} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    assert import_file(tmp_path / "pairs.parquet", "preference").report.accepted == 4
    with (tmp_path / "pairs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "pairs.csv").write_bytes((tmp_path / "pairs.csv").read_bytes() + b"Q\xff?,a,b\r\nQ,,b\r\n")
    imported = import_file(tmp_path / "pairs.csv", "preference")
    assert imported.report.accepted == 4 and imported.report.reasons == {"bad UTF-8": 1, "empty response": 1}


def ultrafeedback_row(ratings, responses=None):
    responses = responses or [f"Response {i}." for i in range(len(ratings))]
    return {"instruction": "Explain rain.", "completions": [
        {"model": f"m{i}", "response": r, "annotations": {
            aspect: {"Rating": value, "Rationale": "..."} for aspect, value in rating.items()}}
        for i, (r, rating) in enumerate(zip(responses, ratings))]}


def test_ultrafeedback_rows_become_ai_rankings_and_ratings(tmp_path):
    rows = [ultrafeedback_row([{"helpfulness": "2", "honesty": "3"}, {"helpfulness": "5", "honesty": "4"},
                               {"helpfulness": "N/A", "honesty": "N/A"}]),
            ultrafeedback_row([{"helpfulness": "4"}, {"helpfulness": "9"}]),
            ultrafeedback_row([{"helpfulness": "4"}, {"helpfulness": "N/A"}]),
            ultrafeedback_row([{"helpfulness": "4"}, {"helpfulness": "3"}], ["Same.", "Same."]),
            {"completions": []}]
    imported = import_file(write_jsonl(tmp_path / "uf.jsonl", rows), "ultrafeedback", ImportOptions(judge="gpt-4"))
    assert imported.report.reasons == {"rating out of scale": 1, "too few rated completions": 1,
                                       "identical responses": 1, "missing field": 1}
    ratings = [r for r in imported.feedback if r["kind"] == "rating"]
    ranking, = [r for r in imported.feedback if r["kind"] == "ranking"]
    assert len(ratings) == 4 and {r["annotator_group"] for r in ratings} == {"helpfulness", "honesty"}
    assert all(r["source"] == "ai" and r["annotator_id"] == "gpt-4" for r in imported.feedback)
    assert ranking["responses"] == ["Response 0.", "Response 1."] and ranking["order"] == [1, 0]
    assert imported.demonstrations[0]["response"] == "Response 1."
    read_feedback_roundtrip(imported.feedback, tmp_path)


def read_feedback_roundtrip(rows, tmp_path):
    from alignray.feedback.schema import write_feedback
    write_feedback(rows, tmp_path / "fb.parquet")
    table, report = read_feedback(tmp_path / "fb.parquet")
    assert report.accepted == len(rows) == table.num_rows


def test_sft_demonstrations_prompt_completion_and_messages(tmp_path):
    rows = [{"prompt": "Say hi.", "completion": "Hi!"},
            {"prompt": [{"role": "user", "content": "Say bye."}],
             "completion": [{"role": "assistant", "content": "Bye!"}]},
            {"messages": [{"role": "system", "content": "Kind."}, {"role": "user", "content": "Hello"},
                          {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "Joke?"},
                          {"role": "assistant", "content": "No."}]},
            {"messages": [{"role": "user", "content": "Unanswered"}]},
            {"prompt": "Say hi.", "completion": ""},
            {"prompt": "Say hi."}]
    imported = import_file(write_jsonl(tmp_path / "sft.jsonl", rows), "sft")
    assert imported.report.reasons == {"bad conversation": 1, "empty response": 1, "missing field": 1}
    chat = imported.demonstrations[2]
    assert chat["system"] == "Kind." and chat["response"] == "No." and len(chat["conversation"]) == 3
    assert not imported.feedback


def test_saved_dataset_needs_the_optional_extra(tmp_path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"alignray\[datasets\]"):
            import_file(tmp_path, "preference")
        return
    datasets.Dataset.from_list([{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}]).save_to_disk(tmp_path / "ds")
    assert import_file(tmp_path / "ds", "preference").report.accepted == 1


def test_convert_command_writes_valid_split_files(tmp_path):
    out = tmp_path / "hh"
    summary = convert.main(["--format", "hh-rlhf", str(HH_EXCERPT), str(out), "--heldout-fraction", "0.3"])
    assert (summary["rows_in"], summary["accepted"], summary["rejected"]) == (30, 28, 2)
    assert json.loads((out / "convert_summary.json").read_text())["reasons"] == summary["reasons"]
    train, _ = read_prompts(out / "prompts_train.parquet", max_chars=10_000)
    heldout, _ = read_prompts(out / "prompts_heldout.parquet", max_chars=10_000)
    assert not set(train["prompt"].to_pylist()) & set(heldout["prompt"].to_pylist())
    assert train.num_rows + heldout.num_rows == 28 and heldout.num_rows > 0
    demos, report = read_demonstrations(out / "demonstrations_train.parquet", max_chars=10_000)
    assert report.rejected == 0 and demos.num_rows == train.num_rows
    feedback, reports = read_feedback_files(out / "feedback_train.parquet")
    assert feedback.num_rows == train.num_rows and reports[0].rejected == 0


def test_conversation_must_match_its_prompt(tmp_path):
    from alignray.data.prompts import PROMPT_SCHEMA
    turns = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    rows = [{"prompt_id": "0", "prompt": render_conversation(turns), "conversation": turns},
            {"prompt_id": "1", "prompt": "C", "conversation": turns},
            {"prompt_id": "2", "prompt": "B", "conversation": turns[:2]}]
    pq.write_table(pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA), tmp_path / "p.parquet")
    table, report = read_prompts(tmp_path / "p.parquet")
    assert report.accepted == 1 and report.reasons == {"invalid prompt": 1, "invalid conversation": 1}


def test_text_cap_is_the_data_max_text_chars_setting(tmp_path):
    from hydra import compose, initialize_config_dir

    from alignray.feedback.sampling import take_prompts
    from alignray.workflows.common import CONFIG_PATH
    out = tmp_path / "hh"
    convert.main(["--format", "hh-rlhf", str(HH_EXCERPT), str(out), "--heldout-fraction", "0"])
    longest = max(len(p) for p in pq.read_table(out / "prompts_train.parquet")["prompt"].to_pylist())
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base=None):
        cfg = compose(config_name="config", overrides=[f"data.max_text_chars={longest - 1}"])
    assert len(take_prompts(out / "prompts_train.parquet", 100, 0, cfg.data.max_text_chars)) == 27
    assert len(take_prompts(out / "prompts_train.parquet", 100, 0, longest)) == 28
