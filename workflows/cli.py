"""The `alignray` command: one entry point for the pipeline, each phase, job submission and
sampling from a trained policy.

    alignray run                                  # the whole pipeline (python -m alignray.workflows.pipeline)
    alignray run experiment=tiny --cfg job        # Hydra overrides and flags pass through unchanged
    alignray sft --help                           # a phase's Hydra help: its config and how to override it
    alignray submit ppo ppo.steps=10              # a Ray job on a cluster (python -m alignray.cluster.submit)
    alignray generate --model runs/<name>/ppo-<hash>/policy --prompt "I love the new"
    alignray chat --model runs/<name>/ppo-<hash>/policy   # a prompt per line on stdin; /exit or EOF ends

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
    "teach-judge": ("alignray.workflows.judge", "a local AI judge taught by a human gold set (RLAIF with a small human budget)"),
    "evaluate": ("alignray.workflows.evaluate", "judge the PPO policy against the SFT model on held-out prompts"),
    "serve": ("alignray.workflows.serve", "the reward model as an HTTP endpoint (Ray Serve, 127.0.0.1)"),
    "collect": ("alignray.workflows.collect", "collect human feedback in web pages: annotators, tasks, serve, compact"),
}
OTHER_COMMANDS = {
    "convert": "your data to alignray's files: --format hh-rlhf|preference|ultrafeedback|sft IN OUT_DIR",
    "submit": "submit a workflow to a Ray cluster as a Ray job, follow or stop it (alignray.cluster.submit)",
    "generate": "sample responses from a trained policy: --model DIR --prompt TEXT | --prompts-file F",
    "chat": "try a trained policy interactively: --model DIR, then one prompt per line (/exit ends)",
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
    if command == "chat":
        return chat(rest)
    if command == "submit":
        from alignray.cluster import submit
        return submit.main(rest)
    if command == "convert":
        from alignray.workflows import convert
        convert.main(rest)
        return 0
    if command not in HYDRA_APPS:
        print(f"alignray: unknown command {command!r}; choose from: "
              f"{', '.join([*HYDRA_APPS, *OTHER_COMMANDS])}", file=sys.stderr)
        return 2
    app = importlib.import_module(HYDRA_APPS[command][0])
    from alignray.workflows.common import run_app
    # Hydra reads its overrides and flags from sys.argv.
    sys.argv = [f"alignray {command}", *rest]
    run_app(app.main)
    return 0


def add_sampling_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The model and how it samples: the same for `generate` and `chat`."""
    parser.add_argument("--model", required=True, help="a Hugging Face model folder (e.g. a PPO run's policy/)")
    parser.add_argument("--samples", type=int, default=1, help="responses per prompt (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=36, help="tokens per response (default 36)")
    parser.add_argument("--max-prompt-tokens", type=int, default=24,
                        help="a longer prompt keeps its last tokens (default 24, data.max_prompt_tokens)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same responses")
    return parser


def generate_parser() -> argparse.ArgumentParser:
    parser = add_sampling_options(argparse.ArgumentParser(
        prog="alignray generate", description="Sample responses from a trained policy (any causal LM folder); "
        "one JSON object per line on stdout: prompt, sample, response."))
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    prompts.add_argument("--prompts-file", type=Path, help="a text file, one prompt per line")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser


def chat_parser() -> argparse.ArgumentParser:
    return add_sampling_options(argparse.ArgumentParser(
        prog="alignray chat", description="Try a trained policy: type a prompt, read its response(s). Each "
        "line is a new prompt (no conversation history); /exit or end of input (Ctrl-D) ends. Reads piped "
        "stdin too: responses go to stdout, one per line, the prompt marker and progress to stderr."))


def read_prompt_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SystemExit(f"alignray generate: no prompts file {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"alignray generate: {path} holds no prompt (one per line)")
    return prompts


def load_trained_policy(command: str, model_dir: str):
    """The policy and its tokenizer, or an error naming the folder that is not a model."""
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"alignray {command}: {model_dir} is not a model folder (no config.json)")
    from alignray.feedback.sampling import load_policy
    return load_policy(model_dir)


def respond(policy, prompts: list[str], args: argparse.Namespace, seed: int,
            batch_size: int = 16) -> list[list[str]]:
    """``args.samples`` responses to each prompt, sampled as the options say."""
    from alignray.feedback.sampling import sample_policy_responses
    model, tokenizer = policy
    # Progress lines go to stderr: stdout holds only the answers.
    with contextlib.redirect_stdout(sys.stderr):
        return sample_policy_responses(model, tokenizer, prompts, args.samples, args.max_prompt_tokens,
                                       args.max_new_tokens, batch_size, args.temperature, seed,
                                       label=Path(args.model).name)


def generate(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    prompts = args.prompt or read_prompt_lines(args.prompts_file)
    policy = load_trained_policy("generate", args.model)
    responses = respond(policy, prompts, args, args.seed, args.batch_size)
    for prompt, answers in zip(prompts, responses):
        for sample, response in enumerate(answers):
            print(json.dumps({"prompt": prompt, "sample": sample, "response": response}, ensure_ascii=False))
    return 0


def chat(argv: list[str], stdin=None) -> int:
    """Answer each prompt read from ``stdin`` until ``/exit`` or end of input. Turn ``t`` samples
    with seed ``--seed + t``: a session replays exactly, and a repeated prompt gets new answers."""
    args = chat_parser().parse_args(argv)
    stdin = sys.stdin if stdin is None else stdin
    policy = load_trained_policy("chat", args.model)
    print(f"alignray chat with {args.model}: a prompt per line, /exit or Ctrl-D to end", file=sys.stderr)
    turn = 0
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            break
        if not line.strip():
            continue
        for response in respond(policy, [line.strip()], args, args.seed + turn)[0]:
            print(response.replace("\n", " "), flush=True)
        turn += 1
    print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
