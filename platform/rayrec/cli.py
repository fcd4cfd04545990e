"""The ``rayrec`` command line: one subcommand per job, all driven by the one typed config.

Every subcommand takes ``--config FILE`` and ``--set section.field=value`` overrides, plus
the common fields as flags (``--data``, ``--out``, ...), so ``rayrec preprocess --data
~/ml-100k --out /tmp/ml100k`` works without a config file. Jobs in ``jobs/`` call
:func:`job_main`, so ``ray job submit -- python jobs/NAME.py --config ...`` parses the same
flags. Ray is reached through RAY_ADDRESS when set, else started locally.

Each subcommand imports the library code it runs inside its function, on purpose: Ray,
torch and transformers take seconds to import, and ``rayrec --help``, ``rayrec config`` or a
mistyped flag should answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from rayrec import console
from rayrec.checkpoints import served_checkpoint
from rayrec.config import RayrecConfig, load_config, parse_override
from rayrec.configbase import describe_yaml
from rayrec.errors import RayrecError, UserFacingError
from rayrec.stages import StageRunner


@dataclass(frozen=True)
class Command:
    """A subcommand: its help text and the library function it runs."""

    help: str
    description: str
    run: Callable[[RayrecConfig, argparse.Namespace], Any]


def _preprocess(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.data.pipeline import run_preprocess

    return run_preprocess(cfg)


def _train(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    """Both stages by default: the retriever (when enabled), then the ranker on its mined lists."""
    from rayrec.runtime import init_ray
    from rayrec.train.trainer import require_schedulable, run_training

    init_ray(cfg.ray)
    stage = getattr(args, "stage", "all")
    out: dict[str, Any] = {}
    if stage in ("all", "ranker"):  # fail before the retriever's minutes if the ranker cannot run
        require_schedulable(cfg)
    if stage in ("all", "retriever") and cfg.retriever.enabled:
        out["retriever"] = _train_retriever(cfg, args)
    if stage in ("all", "ranker"):
        out["ranker"] = run_training(cfg)
    return out if len(out) != 1 else next(iter(out.values()))


def _train_retriever(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.seqrec.trainer import run_retriever_training

    return run_retriever_training(cfg)


def _tune(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.tuning.search import run_tuning

    return run_tuning(cfg)


def _train_generator(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.generative.trainer import run_generator_training

    return run_generator_training(cfg)


def _train_tower(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.itemtower.trainer import run_tower_training

    return run_tower_training(cfg)


def _new_items(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.recipes.newitems import run_new_item_protocol

    result = run_new_item_protocol(cfg, StageRunner(cfg, rebuild=args.rebuild))
    return {"report": result["files"], "models": result["models"], "comparisons": result["comparisons"],
            "protocol": result["protocol"]["new_items"]}


def _evaluate(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.recipes.seeds import run_headline_evaluation

    return run_headline_evaluation(cfg)


def _index(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.retrieval.index import build_index

    return build_index(cfg)


def _bandit(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.explore.experiment import run_experiment

    return run_experiment(cfg)


def _serve(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.runtime import init_ray, require_resources
    from rayrec.serving.app import app_resources
    from rayrec.serving.control import run_blocking

    init_ray(cfg.ray)
    require_resources(app_resources(cfg), "the endpoint's replicas (serve.ranking, serve.retrieval_*, "
                      "serve.ingress_*, serve.generation)",
                      "Lower their num_cpus/num_gpus or replicas in the config, or add nodes.")
    return run_blocking(cfg)


def _export(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.train.checkpoint import export_serving_artifact

    checkpoint = args.checkpoint or served_checkpoint(cfg).path
    if checkpoint is None:
        raise SystemExit(f"no checkpoint found under {cfg.checkpoint_dir}; run `rayrec train` first")
    return export_serving_artifact(checkpoint, args.export_dir, merge=args.merge)


def _feedback(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.recipes.feedback import run_feedback_loop

    return run_feedback_loop(cfg)


def _catalog(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    """`rayrec catalog add|hide`: a client of the running endpoint's admin routes."""
    from rayrec.serving import catalog_client as client

    sc = cfg.serve
    host = "127.0.0.1" if sc.host in ("0.0.0.0", "::") else sc.host
    url = args.url or f"http://{host}:{sc.port}{sc.route_prefix.rstrip('/')}"
    if args.action == "add":
        if not args.file:
            raise UserFacingError("catalog add needs --file ITEMS.jsonl (one JSON object per line)")
        rows = client.read_items_file(args.file)  # every line checked before anything is sent
        key = client.admin_key(args.admin_key_env or sc.admin_api_keys_env, sc.admin_api_keys_file)
        result, total = client.add_items(url, key, rows, max(1, args.batch_size), args.timeout), len(rows)
    else:
        if not args.item_id:
            raise UserFacingError("catalog hide needs --item-id ID (repeatable)")
        key = client.admin_key(args.admin_key_env or sc.admin_api_keys_env, sc.admin_api_keys_file)
        result, total = client.hide_items(url, key, args.item_id, args.timeout), len(args.item_id)
    client.print_result(result)
    if result["rejected"]:
        raise UserFacingError(f"{len(result['rejected'])} of {total} rejected (listed above)")
    return result


def _config(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    """`rayrec config`: the resolved config as YAML, each field under its description."""
    sys.stdout.write(describe_yaml(cfg))
    sys.stdout.flush()
    return None


def _main(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.recipes.main import run_main

    return run_main(cfg, rebuild=args.rebuild)


COMMANDS: dict[str, Command] = {
    "main": Command(
        "run the whole pipeline end to end",
        "Preprocess, build the retrieval index, LoRA-train the ranker with DeepSpeed, evaluate "
        "against baselines, serve, send sample requests and feedback, run an exploration "
        "experiment and an off-policy estimate, and write a report. Reuses built artifacts "
        "unless --rebuild.",
        _main,
    ),
    "preprocess": Command(
        "turn raw interaction logs into training data (Ray Data)",
        "Read, validate, deduplicate, label, k-core filter, map ids, split by time, build "
        "histories and training examples with sampled negatives; write Parquet, rejects and "
        "manifest.json to <out>/data. Without --data it generates the synthetic world.",
        _preprocess,
    ),
    "train": Command(
        "train the retriever, then LoRA fine-tune the ranker (Ray Train + DeepSpeed ZeRO)",
        "Train the sequential retriever (as train-retriever; skipped with retriever.enabled=false), "
        "then fine-tune the ranker's backbone with LoRA on the retriever's mined lists (or "
        "<out>/data/examples, train.examples); checkpoints (adapter, tokenizer, config, resume "
        "state) go to <out>/checkpoints. --stage ranker|retriever trains one.",
        _train,
    ),
    "train-retriever": Command(
        "train the sequential retriever (SASRec, Ray Train) and index its item vectors",
        "Train a next-item self-attention model over each user's item sequence with Ray Train "
        "(DDP over the users), keep the best checkpoint by full-catalog validation NDCG, publish "
        "it to <out>/retriever/model and index its item vectors in <out>/retriever/index.",
        _train_retriever,
    ),
    "tune": Command(
        "tune the retriever's settings on the validation split (Ray Tune over Ray Train runs)",
        "Run one retriever training per combination of tune.search_space (a grid, or "
        "tune.num_samples random draws) on tune.max_epochs epochs each, score each by its best "
        "validation metric (the test split is never read), and write <out>/tune/record.json: the "
        "space, the budget, every trial and the --set line that applies the best.",
        _tune,
    ),
    "train-generator": Command(
        "LoRA-tune the generative recommender (history titles -> next title; Ray Train + DeepSpeed)",
        "Tune generator.backbone (SmolLM2-135M by default) with LoRA under DeepSpeed ZeRO to write "
        "the title of each user's next item after the titles before it (loss on the title only), "
        "validate on held-out validation items, and publish the best adapter by validation loss to "
        "<out>/generator/adapter. Evaluate it with --set evaluate.generative.enabled=true --set "
        "evaluate.generative.adapter=tuned.",
        _train_generator,
    ),
    "train-tower": Command(
        "LoRA-tune the item tower: an item's retriever vector from its text (Ray Train + DeepSpeed)",
        "Tune tower.backbone (MiniLM) with LoRA under DeepSpeed ZeRO so that each warm item's text, "
        "read alone, is ranked by the users who clicked it as the retriever ranks the item itself; "
        "validate on warm items held out of the tuning, publish the best to <out>/tower/model and "
        "rebuild the retriever's index so that items without interactions are served from it. "
        "Needs a text-grounded retriever (retriever.text_init: true).",
        _train_tower,
    ),
    "new-items": Command(
        "the new-item protocol: hold out the newest items from every stage, train, evaluate",
        "Derive <out>/newitems/data (the newest evaluate.new_items.fraction of the items held out of "
        "every training stage, each user's first contact with one the target), build its text index, "
        "train the ID-only and the text-grounded retriever and the LoRA item tower on it, and rank the "
        "full catalog: <out>/newitems/eval. Stages are reused when their config is unchanged.",
        _new_items,
    ),
    "evaluate": Command(
        "offline evaluation against baselines",
        "HR@K, NDCG@K, MRR, AUC, diversity, coverage and novelty of the ranker against popularity "
        "and candidate order on the held-out split; JSON, markdown and a plot in <out>/eval.",
        _evaluate,
    ),
    "index": Command(
        "embed the catalog and build the retrieval index (Ray Data + FAISS)",
        "Embed every item's text with the encoder and build an exact or approximate FAISS "
        "index in <out>/index.",
        _index,
    ),
    "bandit": Command(
        "run an exploration experiment (policies x seeds on Ray)",
        "Simulate or replay exploration policies over many seeds in parallel; reward and regret "
        "curves, CTR, coverage, diversity and off-policy estimates in <out>/explore.",
        _bandit,
    ),
    "serve": Command(
        "serve the recommendation endpoint (Ray Serve) until interrupted",
        "Deploy retrieval + ranking + ingress on Ray Serve and block; same as `serve run "
        "serve_configs/local.yaml`.",
        _serve,
    ),
    "export": Command(
        "export a serving artifact from a training checkpoint",
        "Write the LoRA adapter (or, with --merge, the adapter merged into the base weights) "
        "with tokenizer and config to --export-dir.",
        _export,
    ),
    "catalog": Command(
        "add items to (or hide items from) a running endpoint, without retraining",
        "`catalog add --file items.jsonl` posts the file's items (one JSON object per line: item_id, "
        "title, optional genres and text) to the endpoint's POST /items in batches and prints each row "
        "as added or rejected with its reason; `catalog hide --item-id X [--item-id Y]` stops "
        "recommending items. Needs an admin key (the endpoint's serve.admin_api_keys_env, read from "
        "--admin-key-env here). A bad file line is an error naming its line; nothing is sent then.",
        _catalog,
    ),
    "feedback": Command(
        "retrain from the endpoint's feedback log and promote if better",
        "Turn impressions and feedback into training examples, fine-tune a new adapter from the "
        "current one, evaluate both, and when the new one is better switch the running endpoint "
        "(serve.app_name on the same Ray cluster, e.g. --address auto after `ray start --head`) "
        "to it in place, without dropping requests.",
        _feedback,
    ),
    "config": Command(
        "print the resolved config as YAML, each field with its description",
        "Load --config (built-in defaults without it), apply the flags and --set overrides, validate, "
        "and print the result as YAML with each field's description as a comment above it. The "
        "output is itself a valid config file; nothing is run.",
        _config,
    ),
}


def _add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=1e-4 (repeatable; `rayrec config` lists "
        "every field and what it means)",
    )
    p.add_argument("--out", help="run directory for all artifacts (config: run_dir)")
    p.add_argument("--data", help="input data path or URI (config: data.path)")
    p.add_argument(
        "--source", choices=["auto", "synthetic", "movielens", "events"],
        help="input kind (config: data.source); auto detects from the files",
    )
    p.add_argument("--format", choices=["auto", "csv", "parquet", "jsonl"], help="event file format")
    p.add_argument("--backbone", help="ranker backbone: 'minilm', a hub id or a local path")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print every log line, Ray's included (default: one line per stage; "
                   "Ray's logs go to its session log directory)")
    p.add_argument("--json", action="store_true", help="print the command's result as JSON at the end")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree: ``rayrec <command> [flags]``."""
    parser = argparse.ArgumentParser(
        prog="rayrec",
        description="Ray-based distributed training and serving for LLM-powered recommendation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.description)
        _add_common_flags(p)
        if name in ("main", "new-items"):
            p.add_argument("--rebuild", action="store_true", help="rebuild every stage")
        if name == "train":
            p.add_argument("--stage", choices=["all", "retriever", "ranker"], default="all",
                           help="which model to train (default: the retriever, then the ranker)")
        if name == "catalog":
            p.add_argument("action", choices=["add", "hide"], help="add items from --file, or hide --item-id")
            p.add_argument("--file", help="JSON lines of items to add (item_id, title, genres, text)")
            p.add_argument("--item-id", action="append", default=[], help="an item to hide (repeatable)")
            p.add_argument("--url", help="the endpoint (default http://serve.host:serve.port/serve.route_prefix)")
            p.add_argument("--admin-key-env", help="env var holding the admin key (default serve.admin_api_keys_env)")
            p.add_argument("--batch-size", type=int, default=500, help="rows per POST (<= serve.admin_max_rows)")
            p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each POST")
        if name == "export":
            p.add_argument("--checkpoint", help="checkpoint dir (default: what the run serves: the feedback promotion, else the training run's best)")
            p.add_argument("--export-dir", required=True, help="where to write the artifact")
            p.add_argument("--merge", action="store_true", help="merge LoRA into the base weights")
    return parser


def config_from_args(args: argparse.Namespace) -> RayrecConfig:
    """Config file + flags + --set overrides, validated once."""
    overrides: dict[str, Any] = {}
    flag_fields = {
        "out": "run_dir", "data": "data.path", "source": "data.source", "format": "data.format",
        "backbone": "model.backbone", "address": "ray.address",
    }
    for flag, field in flag_fields.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = os.path.expanduser(value) if flag in ("out", "data") else value
    for item in args.overrides:
        key, value = parse_override(item)
        overrides[key] = value
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rayrec`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)

    console.setup_console(args.verbose)
    error: RayrecError | FileNotFoundError | None = None
    try:
        cfg = config_from_args(args)
        result = _run(cfg, args)
    except (RayrecError, FileNotFoundError) as exc:
        error = exc
    finally:
        console.close_console()  # back to plain stderr: what follows is for the person
    if error is not None:  # meant for the user: one line, no traceback
        print(f"rayrec {args.command}: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)
    if result is not None and (args.json or args.verbose):
        print(json.dumps(_summarise(result), indent=2, default=str))
    return 0


# Long-running or multi-stage commands report their own lines; the others are one stage each.
_NOT_A_STAGE = {"main", "serve", "catalog", "new-items"}
# Commands that only read the config: no job paths to check, no stage to report.
_CONFIG_ONLY = {"config"}


def _run(cfg: RayrecConfig, args: argparse.Namespace) -> Any:
    from rayrec.runtime import check_job_paths

    run = COMMANDS[args.command].run
    if args.command in _CONFIG_ONLY:
        return run(cfg, args)
    check_job_paths(cfg)
    if args.command in _NOT_A_STAGE:
        return run(cfg, args)
    with console.stage(args.command):
        result = run(cfg, args)
    console.stage_done(result)
    return result


def _summarise(result: Any) -> Any:
    if hasattr(result, "model_dump"):
        return result.model_dump()
    if hasattr(result, "__dataclass_fields__"):
        return asdict(result)
    return result


def job_main(command: str, argv: list[str] | None = None) -> None:
    """Entry of ``jobs/<command>.py``: the same flags as ``rayrec <command>``."""
    argv = sys.argv[1:] if argv is None else argv
    sys.exit(main([command, *argv]))


if __name__ == "__main__":
    sys.exit(main())
