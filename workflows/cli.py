"""The `alignray` command: one entry point for the pipeline, each phase, job submission and
sampling from a trained policy.

    alignray run                                  # the whole pipeline (python -m alignray.workflows.pipeline)
    alignray run experiment=tiny --cfg job        # Hydra overrides and flags pass through unchanged
    alignray sft --help                           # a phase's Hydra help: its config and how to override it
    alignray submit ppo ppo.steps=10              # a Ray job on a cluster (python -m alignray.cluster.submit)
    alignray generate --model runs/<name>/ppo-<hash>/policy --prompt "I love the new"

Each subcommand imports its app only when it runs, so `alignray --help` starts in a moment
and the Ray-free `alignray/` package stays Ray-free.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path

# subcommand -> (module whose main() it runs, one line for --help)
HYDRA_APPS = {
    "run": ("alignray.workflows.pipeline", "the whole pipeline: pretrain, SFT, feedback, reward model, PPO, evaluation, report"),
    "pretrain": ("alignray.workflows.pretrain", "phase 1: pretrain (or resolve) the base model"),
    "sft": ("alignray.workflows.sft", "phase 2: supervised fine-tuning on demonstrations (Ray Train + DeepSpeed)"),
    "feedback": ("alignray.workflows.feedback", "phase 3a: collect, check and aggregate human (and AI) feedback"),
    "reward-model": ("alignray.workflows.reward_model", "phase 3b: train, normalise and evaluate the reward model"),
    "ppo": ("alignray.workflows.ppo", "phase 4: PPO on Ray actors against the reward model"),
    "dpo": ("alignray.workflows.dpo", "DPO / IPO / cDPO: the SFT model trained directly on the feedback's preference pairs"),
    "evaluate": ("alignray.workflows.evaluate", "judge the PPO policy against the SFT model on held-out prompts"),
    "serve": ("alignray.workflows.serve", "the reward model as an HTTP endpoint (Ray Serve, 127.0.0.1)"),
}
OTHER_COMMANDS = {
    "submit": "submit a workflow to a Ray cluster as a Ray job, follow or stop it (alignray.cluster.submit)",
    "generate": "sample responses from a trained policy: --model DIR --prompt TEXT | --prompts-file F",
}


def usage() -> str:
    width = max(map(len, [*HYDRA_APPS, *OTHER_COMMANDS]))
    lines = [f"  {name:<{width}}  {line}" for name, (_, line) in HYDRA_APPS.items()]
    lines += [f"  {name:<{width}}  {line}" for name, line in OTHER_COMMANDS.items()]
    return ("usage: alignray COMMAND [HYDRA_OVERRIDE ...] [--help]\n\n"
            "RLHF as a distributed workflow on Ray.\n\ncommands:\n" + "\n".join(lines) + "\n\n"
            "Hydra overrides and flags pass through unchanged (alignray run experiment=tiny --cfg job);\n"
            "`alignray COMMAND --help` shows a command's options and config.\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "generate":
        return generate(rest)
    if command == "submit":
        from alignray.cluster import submit
        return submit.main(rest)
    if command not in HYDRA_APPS:
        print(f"alignray: unknown command {command!r}; choose from: "
              f"{', '.join([*HYDRA_APPS, *OTHER_COMMANDS])}", file=sys.stderr)
        return 2
    app = importlib.import_module(HYDRA_APPS[command][0])
    # Hydra reads its overrides and flags from sys.argv.
    sys.argv = [f"alignray {command}", *rest]
    app.main()
    return 0


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignray generate", description="Sample responses from a trained policy (any causal LM folder); "
        "one JSON object per line on stdout: prompt, sample, response.")
    parser.add_argument("--model", required=True, help="a Hugging Face model folder (e.g. a PPO run's policy/)")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    prompts.add_argument("--prompts-file", type=Path, help="a text file, one prompt per line")
    parser.add_argument("--samples", type=int, default=1, help="responses per prompt (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=36, help="tokens per response (default 36)")
    parser.add_argument("--max-prompt-tokens", type=int, default=24,
                        help="a longer prompt keeps its last tokens (default 24, data.max_prompt_tokens)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same responses")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser


def read_prompt_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SystemExit(f"alignray generate: no prompts file {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"alignray generate: {path} holds no prompt (one per line)")
    return prompts


def generate(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"alignray generate: {args.model} is not a model folder (no config.json)")
    prompts = args.prompt or read_prompt_lines(args.prompts_file)
    from alignray.feedback.sampling import load_policy, sample_policy_responses

    model, tokenizer = load_policy(args.model)
    # Progress lines go to stderr: stdout holds only the answers.
    with contextlib.redirect_stdout(sys.stderr):
        responses = sample_policy_responses(model, tokenizer, prompts, args.samples, args.max_prompt_tokens,
                                            args.max_new_tokens, args.batch_size, args.temperature, args.seed,
                                            label=Path(args.model).name)
    for prompt, answers in zip(prompts, responses):
        for sample, response in enumerate(answers):
            print(json.dumps({"prompt": prompt, "sample": sample, "response": response}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
