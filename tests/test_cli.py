"""The `alignray` command (workflows/cli.py), run as the console script runs it: a new
process, `python -m alignray.workflows.cli` (the venv's `alignray` script exists only after the
project is installed again), plus the declaration that makes the script."""
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from alignray.workflows import cli

ROOT = Path(__file__).resolve().parents[1]


def alignray(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignray.workflows.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_pyproject_declares_the_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"alignray": "alignray.workflows.cli:main"}


def test_help_lists_every_subcommand_with_one_line():
    done = alignray("--help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert listed == {"run", "pretrain", "sft", "feedback", "reward-model", "ppo", "dpo", "teach-judge", "evaluate",
                      "serve", "collect", "convert", "submit", "generate", "chat"}
    assert alignray().returncode == 2  # no command: usage on stderr


def test_run_passes_hydra_overrides_and_flags_through():
    done = alignray("run", "experiment=tiny", "ppo.steps=3", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["name"] == "tiny" and config["ppo"]["steps"] == 3


def test_a_moved_key_is_refused_with_its_new_name_before_hydra_composes():
    done = alignray("ppo", "ppo.lr=1e-5", "ppo.eval.num_prompts=8")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "ppo.lr moved to ppo.policy.lr; ppo.eval.num_prompts moved to eval.num_prompts" in done.stderr
    module = subprocess.run([sys.executable, "-m", "alignray.workflows.ppo", "ppo.critic_lr=1e-4"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert module.returncode == 1 and "ppo.critic_lr moved to ppo.critic.lr" in module.stderr


def test_a_phase_help_is_hydras_and_an_unknown_command_is_refused():
    done = alignray("reward-model", "--help")
    assert done.returncode == 0 and "reward_model is powered by Hydra" in done.stdout
    assert "experiment: " in done.stdout  # the config groups a user can pick from
    refused = alignray("rewardmodel")
    assert refused.returncode == 2 and "unknown command 'rewardmodel'" in refused.stderr


def test_generate_samples_each_prompt_reproducibly(tiny_base_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("I love the new\n\nMonday mornings are\n")
    args = ["generate", "--model", str(tiny_base_model), "--prompts-file", str(prompts), "--samples", "2",
            "--max-new-tokens", "6", "--seed", "3"]
    outputs = []
    for _ in range(2):
        assert cli.main(args) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert outputs[0] == outputs[1]
    assert [(r["prompt"], r["sample"]) for r in outputs[0]] == [
        ("I love the new", 0), ("I love the new", 1), ("Monday mornings are", 0), ("Monday mornings are", 1)]
    with pytest.raises(SystemExit, match="not a model folder"):
        cli.main(["generate", "--model", str(tmp_path), "--prompt", "hi"])


def test_chat_answers_piped_prompts_until_exit_and_matches_generate(tiny_base_model):
    """A new process reading piped stdin, as `echo ... | alignray chat` runs: one response per
    prompt line, blank lines skipped, nothing read after /exit; the first turn samples as
    `generate` does with the same seed (they share the loading and sampling code)."""
    sampling = ["--model", str(tiny_base_model), "--max-new-tokens", "6", "--seed", "5"]
    chat = subprocess.run([sys.executable, "-m", "alignray.workflows.cli", "chat", *sampling], cwd=ROOT, text=True,
                          input="I love the new\n\nMonday mornings are\n/exit\nThe weather today is\n",
                          capture_output=True, timeout=300, check=False)
    assert chat.returncode == 0, chat.stderr
    answers = chat.stdout.splitlines()
    assert len(answers) == 2 and all(answers)
    assert "> " in chat.stderr and "/exit" in chat.stderr  # the marker and the help line, not on stdout
    generated = alignray("generate", *sampling, "--prompt", "I love the new")
    assert generated.returncode == 0, generated.stderr
    assert json.loads(generated.stdout)["response"].replace("\n", " ") == answers[0]


def test_chat_ends_at_end_of_input_and_refuses_a_folder_without_a_model(tiny_base_model, tmp_path, capsys):
    assert cli.chat(["--model", str(tiny_base_model), "--max-new-tokens", "4", "--samples", "2"],
                    stdin=io.StringIO("My phone just")) == 0  # no newline, then end of input
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(SystemExit, match="not a model folder"):
        cli.chat(["--model", str(tmp_path)], stdin=io.StringIO("hi\n"))
