"""`python -m model_zoo`: list, inspect, run, export, configure and convert zoo models.

  python -m model_zoo list [--json]
  python -m model_zoo info NAME [--json | --architecture]
  python -m model_zoo predict --model NAME --image IMG [--output OUT.png] [--json] [--min_score S]
  python -m model_zoo export --model NAME --dir DIR
  python -m model_zoo config --model NAME [--output FILE.yaml]
  python -m model_zoo convert --model_garden_checkpoint CKPT --model NAME --output DIR
  python -m model_zoo measure --model NAME
  python -m model_zoo calibrate NAME [--write] [--unseen N]

Every command takes `--zoo_dir DIR` (a folder with entries/ and weights/,
e.g. the output of `convert`) and `--verbosity` / `-v` (absl's levels: -1
shows TensorFlow's warnings, 0 its info lines; by default only errors);
`--model` also takes a path to an entry JSON.
"""
import argparse
import json
import os
import tempfile
from typing import Any, Dict, Optional, Sequence

from model_zoo import registry
from model_zoo.entry import DEFAULT_MIN_SCORE, ZooEntry, ZooError
from spinesearch import logs


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m model_zoo",
                                   description=__doc__.split("\n\n")[0])
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--zoo_dir", default=None,
                      help="zoo folder with entries/ and weights/ (default: the package's)")
  common.add_argument("-v", "--verbosity", type=int, default=None, metavar="LEVEL",
                      help="TensorFlow and absl log lines to show, in absl's levels: -1 "
                           "warnings, 0 info, 1 debug (default: errors only)")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  listing = commands.add_parser("list", parents=[common], help="the zoo's entries")
  listing.add_argument("--json", action="store_true", help="a JSON list of entry summaries")

  info = commands.add_parser("info", parents=[common], help="one entry in detail")
  info.add_argument("name")
  shown = info.add_mutually_exclusive_group()
  shown.add_argument("--json", action="store_true", help="the whole entry JSON")
  shown.add_argument("--architecture", action="store_true",
                     help="the entry's architecture JSON (the project's schema, for any tool's "
                          "--architecture)")

  predict = commands.add_parser("predict", parents=[common], help="detect objects in an image")
  predict.add_argument("--model", required=True)
  predict.add_argument("--image", required=True, help="an image file Pillow can read")
  predict.add_argument("--output", help="write the image with boxes and labels drawn (PNG, JPEG)")
  predict.add_argument("--json", action="store_true", help="print the detections as JSON")
  predict.add_argument("--min_score", type=float, default=None,
                       help="drop detections scoring lower (default: the entry's calibrated "
                            f"score threshold, else {DEFAULT_MIN_SCORE})")

  export = commands.add_parser("export", parents=[common],
                               help="SavedModel with a serving signature on uint8 images")
  export.add_argument("--model", required=True)
  export.add_argument("--dir", required=True)

  config = commands.add_parser("config", parents=[common],
                               help="the Model Garden experiment config (YAML) of an entry")
  config.add_argument("--model", required=True)
  config.add_argument("--output", help="write the YAML to this file instead of printing it")

  convert = commands.add_parser("convert", parents=[common],
                                help="Model Garden TF2 RetinaNet checkpoint -> zoo weights")
  convert.add_argument("--model_garden_checkpoint", required=True,
                       help="checkpoint prefix (ckpt-N) or the folder holding it")
  convert.add_argument("--model", required=True, help="the zoo entry the checkpoint's model is")
  convert.add_argument("--output", required=True,
                       help="zoo folder to write (entries/NAME.json, weights/NAME-HASH.npz)")
  convert.add_argument("--num_classes", type=int, help="the checkpoint's classes, if not the entry's")
  convert.add_argument("--input_size", type=int, help="input size for the converted entry")
  convert.add_argument("--float16", action="store_true",
                       help="store float16 (half the size; default float32, exact)")

  measure = commands.add_parser("measure", parents=[common],
                                help="recompute an entry's params and multiply-adds into it")
  measure.add_argument("--model", required=True)

  calibrate = commands.add_parser(
      "calibrate", parents=[common],
      help="choose the entry's score threshold on its validation split")
  calibrate.add_argument("name", help="a zoo entry with weights (or an entry JSON)")
  calibrate.add_argument("--write", action="store_true",
                         help="store the threshold and its calibration record in the entry")
  calibrate.add_argument("--max_images", type=int, default=None,
                         help="calibrate on the first N validation images (default: all)")
  calibrate.add_argument("--cache_dir", default=None, help="synthetic set cache "
                         "(default $SPINESEARCH_CACHE or ~/.cache/spinesearch)")
  calibrate.add_argument("--unseen", type=int, default=0, metavar="N",
                         help="also score N unseen synthetic scenes at the threshold and at "
                              f"{DEFAULT_MIN_SCORE} (default 0: none)")
  calibrate.add_argument("--unseen_seed", type=int, default=None,
                         help="generator seed of those scenes (default 987654)")
  return parser


def main(argv: Sequence[str]) -> int:
  args = build_parser().parse_args(argv)
  # Before a command imports TensorFlow: an explicit --verbosity reaches its C++ logging only then.
  logs.configure(args.verbosity)
  return COMMANDS[args.command](args)


# ---- commands -------------------------------------------------------------------

def list_command(args) -> int:
  entries = [registry.get_entry(name, args.zoo_dir) for name in registry.list_models(args.zoo_dir)]
  rows = [summary(e) for e in entries]
  if args.json:
    print(json.dumps(rows, indent=2))
    return 0
  header = (f"{'name':<24} {'input':>5} {'classes':>7} {'params M':>9} {'GFLOPs':>8} "
            f"{'weights':>9}  {'AP here (dataset)':<40} {'paper AP':>8}")
  print(header)
  print("-" * len(header))
  for r in rows:
    here = (f"{r['ap_here']:.3f} ({r['ap_here_dataset']})" if r["ap_here"] is not None else "-")
    print(f"{r['name']:<24} {r['input_size']:>5} {r['num_classes']:>7} "
          f"{_fmt(r['params_m'], '.2f'):>9} {_fmt(r['gflops'], '.2f'):>8} "
          f"{_fmt(r['weights_mb'], '.1f', ' MB'):>9}  {here:<40} {_fmt(r['paper_ap'], '.3f'):>8}")
  print("params: trainable weights; GFLOPs: 10^9 multiply-adds of one image at the input size; "
        "AP: pycocotools, as a fraction.\nAP here: these weights, measured here; paper AP: COCO "
        "val2017 as published, for the paper's own weights (not available here).")
  return 0


def info_command(args) -> int:
  entry = registry.get_entry(args.name, args.zoo_dir)
  if args.json:
    print(entry.to_json(), end="")
    return 0
  if args.architecture:
    print(entry.architecture.to_json())
    return 0
  s = summary(entry)
  arch = entry.architecture
  lines = [
      f"{entry.name}: {entry.description}",
      f"  architecture: {arch.space} space, {len(arch.blocks)} blocks, {len(arch.cells)} cells, "
      f"levels P{arch.min_level}-P{arch.max_level}",
      f"  scaling: {json.dumps(arch.scaling.to_dict())}",
      f"  head: {json.dumps(entry.head.to_dict())}; {json.dumps(entry.norm_activation.to_dict())}",
      f"  input {entry.input_size} px, {entry.num_classes} classes (incl. background)",
      f"  params {_fmt(s['params_m'], '.2f', 'M')}, {_fmt(s['gflops'], '.2f', ' G')} multiply-adds",
      f"  weights: " + (f"{entry.weights.file} ({entry.weights.bytes} bytes, sha256 "
                        f"{entry.weights.sha256}) {entry.weights.source}" if entry.weights else
                        "none (python -m model_zoo convert ... makes them from a Model Garden "
                        "checkpoint)"),
  ]
  for m in entry.metrics:
    where = "measured here" if m.get("measured_here") else "reported"
    lines.append(f"  AP {m.get('ap')}: {where} on {m.get('dataset')} at {m.get('input_size')} px"
                 f"{' (' + m['schedule'] + ')' if m.get('schedule') else ''}")
  lines.append(f"  {_score_threshold_line(entry)}")
  lines.append(f"  provenance: {json.dumps(_short_provenance(entry.provenance))}")
  print("\n".join(lines))
  return 0


def predict_command(args) -> int:
  image = read_image(args.image)
  from model_zoo import detector
  model = detector.load(args.model, zoo_dir=args.zoo_dir)
  min_score = model.entry.default_min_score() if args.min_score is None else args.min_score
  [result] = model.predict(image, min_score=min_score)
  if args.output:
    from model_zoo.draw import draw_detections
    save_image_atomically(draw_detections(image, result), args.output)
  if args.json:
    print(json.dumps(detections_json(model.entry, args.image, result), indent=2))
  else:
    for box, score, name in zip(result["boxes"], result["scores"], result["class_names"]):
      print(f"{name:<16} {score:.3f}  ymin {box[0]:.1f} xmin {box[1]:.1f} "
            f"ymax {box[2]:.1f} xmax {box[3]:.1f}")
    print(f"{len(result['scores'])} detections scoring >= {min_score} "
          f"({model.name}, boxes in image pixels)"
          + (f"; drawn to {args.output}" if args.output else ""))
  return 0


def export_command(args) -> int:
  from model_zoo import detector
  model = detector.load(args.model, zoo_dir=args.zoo_dir)
  path = model.export_saved_model(args.dir)
  print(f"exported {model.name} to {path} (signature serving_default: uint8 images "
        f"[batch, height, width, 3])")
  return 0


def config_command(args) -> int:
  import yaml
  from model_zoo import modeling
  entry = registry.get_entry(args.model, args.zoo_dir)
  text = yaml.dump(modeling.model_garden_config(entry).as_dict(), default_flow_style=False)
  if args.output:
    from spinesearch.files import write_text_atomically
    write_text_atomically(args.output, text)
    print(f"wrote {args.output} (Model Garden experiment retinanet_spinesearch; import "
          f"spinesearch.modeling.garden before Model Garden reads it)")
  else:
    print(text, end="")
  return 0


def convert_command(args) -> int:
  from model_zoo import convert
  entry = registry.get_entry(args.model, args.zoo_dir)
  converted = convert.convert_checkpoint(
      entry, args.model_garden_checkpoint, args.output, float16=args.float16,
      num_classes=args.num_classes, input_size=args.input_size)
  print(f"converted {args.model_garden_checkpoint} -> "
        f"{registry.entry_path(converted.name, args.output)} + "
        f"{os.path.join(registry.weights_dir(args.output), converted.weights.file)}; use it with "
        f"--zoo_dir {args.output} --model {converted.name}")
  return 0


def measure_command(args) -> int:
  from model_zoo import modeling
  entry, zoo_dir = registry.locate(args.model, args.zoo_dir)
  measured = entry.replace(cost=modeling.measure_cost(entry))
  measured.save(_entry_file(args.model, entry, zoo_dir))
  print(f"{entry.name}: {measured.cost['params']:,} params (trainable), "
        f"{measured.cost['multiply_adds'] / 1e9:.2f} G multiply-adds at {entry.input_size} px")
  return 0


def calibrate_command(args) -> int:
  from model_zoo import calibration, detector
  entry, zoo_dir = registry.locate(args.name, args.zoo_dir)
  data, dataset_name = calibration.entry_dataset(entry, args.cache_dir)
  model = detector.load_entry(entry, zoo_dir)
  record = calibration.calibrate(model, data, dataset_name, max_images=args.max_images)
  print(f"{entry.name}: score threshold {record.threshold:g}: {record.method}")
  print(f"  {_calibration_line(record.calibration)}")
  if args.unseen:
    seed = calibration.UNSEEN_SEED if args.unseen_seed is None else args.unseen_seed
    matched = calibration.match_scenes(
        model, calibration.unseen_scenes(entry.input_size, args.unseen, seed))
    print(f"  {args.unseen} unseen synthetic scenes (seed {seed}), {matched.num_objects} objects:")
    for threshold in (record.threshold, DEFAULT_MIN_SCORE):
      at = matched.at(threshold)
      print(f"    at {threshold:g}: recall {at['recall']:.3f}, "
            f"{at['detections_per_object']:.2f} detections per object")
  if args.write:
    path = _entry_file(args.name, entry, zoo_dir)
    entry.replace(score_threshold=record).save(path)
    print(f"wrote it into {path}; predict uses it unless min_score is given")
  else:
    print("not written (--write stores it in the entry)")
  return 0


COMMANDS = {"list": list_command, "info": info_command, "predict": predict_command,
            "export": export_command, "config": config_command, "convert": convert_command,
            "measure": measure_command, "calibrate": calibrate_command}


# ---- helpers ---------------------------------------------------------------------

def summary(entry: ZooEntry) -> Dict[str, Any]:
  """What `list` shows of an entry."""
  here = entry.metric_measured_here()
  paper = [m for m in entry.metrics if not m.get("measured_here") and m.get("ap") is not None]
  cost = entry.cost
  return {
      "name": entry.name,
      "input_size": entry.input_size,
      "num_classes": entry.num_classes,
      "params_m": cost["params"] / 1e6 if "params" in cost else None,
      "gflops": cost["multiply_adds"] / 1e9 if "multiply_adds" in cost else None,
      "weights_mb": entry.weights.bytes / 1e6 if entry.weights else None,
      "ap_here": here["ap"] if here else None,
      "ap_here_dataset": here.get("dataset") if here else None,
      "paper_ap": max(m["ap"] for m in paper) if paper else None,
      "provenance": entry.provenance.get("kind"),
      "description": entry.description,
  }


def read_image(path: str):
  import numpy as np
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise ZooError(f"{path}: image file not found") from None
  except (UnidentifiedImageError, OSError) as e:
    raise ZooError(f"{path}: not an image Pillow can read ({e})") from None


def save_image_atomically(image, path: str) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  suffix = os.path.splitext(path)[1] or ".png"
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  os.close(fd)
  try:
    try:
      image.save(tmp)
    except (ValueError, KeyError) as e:
      raise ZooError(f"{path}: cannot write this image format ({e}); use .png or .jpg") from None
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def detections_json(entry: ZooEntry, image_path: str, result) -> Dict[str, Any]:
  return {
      "model": entry.name,
      "image": image_path,
      "box_format": "ymin, xmin, ymax, xmax in image pixels",
      "detections": [
          {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4),
           "class": int(label), "class_name": name}
          for box, score, label, name in zip(result["boxes"], result["scores"],
                                             result["classes"], result["class_names"])],
  }


def _entry_file(model: str, entry: ZooEntry, zoo_dir: str) -> str:
  """The file an entry given as a name or an entry JSON path was read from."""
  return model if model.endswith(".json") else registry.entry_path(entry.name, zoo_dir)


def _score_threshold_line(entry: ZooEntry) -> str:
  record, default = entry.score_threshold, DEFAULT_MIN_SCORE
  if record is None:
    return f"score threshold: {default:g} (the default; not calibrated: python -m model_zoo calibrate)"
  if entry.calibrated_threshold() is None:
    return (f"score threshold: {default:g} (the default; {record.threshold:g} was calibrated for "
            f"other weights)")
  return (f"score threshold: {record.threshold:g}, {record.method}, "
          f"{_calibration_line(record.calibration)}")


def _calibration_line(calibration: Dict[str, Any]) -> str:
  return (f"on {calibration.get('dataset')} {calibration.get('split')}, "
          f"{calibration.get('num_images')} images, {calibration.get('num_objects')} objects: "
          f"recall {_fmt(calibration.get('recall'), '.3f')}, "
          f"{_fmt(calibration.get('detections_per_object'), '.2f')} detections per object, "
          f"precision {_fmt(calibration.get('precision'), '.3f')}")


def _fmt(value: Optional[float], spec: str, unit: str = "") -> str:
  return "-" if value is None else f"{value:{spec}}{unit}"


def _short_provenance(provenance: Dict[str, Any]) -> Dict[str, Any]:
  # A search's flags and metrics are long; `info --json` shows them in full.
  return {k: v for k, v in provenance.items() if k not in ("flags", "search_metrics", "space")}
