"""Converts a COCO detection dataset (JSON + image folder) into sharded
TFRecords in Model Garden's detection schema, checking every record.

COCO category ids are kept as class labels (Model Garden's convention, which
its COCO evaluator relies on); a model for the result needs num_classes = max
category id + 1. The first problem found stops the run with one line naming
the file and the record, exit status 2, and no output file: shards are written
under temporary names and moved into place only after the last image.

Usage:
  python -m spinesearch.data.coco_to_tfrecord --annotations instances.json \
      --images DIR --output PREFIX [--num_shards N]
  -> PREFIX-00000-of-0000N.tfrecord, ...
"""
import argparse
import dataclasses
import io
import os
import sys
from typing import Sequence, Tuple

from PIL import Image

from spinesearch.data import coco_json
from spinesearch.errors import DatasetError, run_cli

# Encodings TensorFlow's decode_image reads into 3 channels as stored; any
# other (GIF, BMP, TIFF, CMYK JPEG, 16-bit PNG...) is re-encoded as RGB PNG.
_KEPT_ENCODINGS = {
    "JPEG": ("jpeg", frozenset({"L", "RGB"})),
    "PNG": ("png", frozenset({"L", "LA", "P", "RGB", "RGBA"})),
}


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
  pattern: str
  num_images: int
  num_objects: int
  num_classes: int


def read_image(annotations_path: str, images_dir: str,
               image: coco_json.CocoImage) -> Tuple[bytes, str]:
  """Returns (encoded bytes, "png" | "jpeg") for one COCO image, checked to
  decode fully and to have the size the JSON gives."""
  path = os.path.join(images_dir, image.file_name)
  where = f"{annotations_path}: image id {image.id}"
  try:
    with open(path, "rb") as f:
      encoded = f.read()
  except FileNotFoundError:
    raise DatasetError(f"{where}: file {path} not found") from None
  except OSError as e:
    raise DatasetError(f"{where}: cannot read {path}: {e.strerror}") from None
  try:
    decoded = Image.open(io.BytesIO(encoded))
    decoded.load()
  # Pillow reports corrupt data through several exception types.
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise DatasetError(f"{where}: cannot read {path} as an image "
                       f"({type(e).__name__}: {e})") from None
  if decoded.size != (image.width, image.height):
    raise DatasetError(f"{where}: {path} is {decoded.width}x{decoded.height} "
                       f"but the JSON says {image.width}x{image.height}")
  kept = _KEPT_ENCODINGS.get(decoded.format)
  if kept and decoded.mode in kept[1]:
    return encoded, kept[0]
  buffer = io.BytesIO()
  decoded.convert("RGB").save(buffer, format="PNG")
  return buffer.getvalue(), "png"


def convert(annotations_path: str, images_dir: str, output_prefix: str,
            num_shards: int = 1) -> ConversionSummary:
  """Writes OUTPUT_PREFIX-SSSSS-of-NNNNN.tfrecord; raises DatasetError (and
  leaves no output) on the first bad record."""
  if num_shards < 1:
    raise DatasetError(f"--num_shards must be >= 1, got {num_shards}")
  if not os.path.isdir(images_dir):
    raise DatasetError(f"{images_dir}: image folder not found")
  coco = coco_json.load_coco(annotations_path)
  # Loaded only once the JSON has passed, so a bad file fails in well under a
  # second instead of after TensorFlow's start-up.
  from spinesearch.data import tfexample
  with tfexample.ShardedRecordWriter(output_prefix, num_shards) as writer:
    for image in coco.images:
      encoded, image_format = read_image(annotations_path, images_dir, image)
      objects = coco.objects_by_image[image.id]
      example = tfexample.encode_detection_example(
          image_bytes=encoded, image_format=image_format, width=image.width,
          height=image.height, image_id=image.id, filename=image.file_name,
          coco_boxes=[o.bbox for o in objects],
          labels=[o.category_id for o in objects],
          areas=[o.area for o in objects],
          is_crowd=[o.iscrowd for o in objects])
      writer.write(example.SerializeToString())
  return ConversionSummary(pattern=writer.pattern,
                           num_images=len(coco.images),
                           num_objects=coco.num_objects,
                           num_classes=coco.num_classes)


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m spinesearch.data.coco_to_tfrecord",
      description="Convert COCO detection annotations and images into "
                  "TFRecords for Model Garden's RetinaNet input pipeline.")
  parser.add_argument("--annotations", required=True,
                      help="COCO instances JSON")
  parser.add_argument("--images", required=True,
                      help="folder the JSON's file names are relative to")
  parser.add_argument("--output", required=True,
                      help="output prefix: PREFIX-00000-of-0000N.tfrecord")
  parser.add_argument("--num_shards", type=int, default=1)
  args = parser.parse_args(argv)
  summary = convert(args.annotations, args.images, args.output,
                    args.num_shards)
  print(f"wrote {summary.num_images} images ({summary.num_objects} objects) "
        f"to {summary.pattern}; use num_classes = {summary.num_classes} "
        f"(max category id + 1)")


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
