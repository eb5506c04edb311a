"""Helpers shared by the runner and resume tests: the processes below a pid,
read from /proc (Linux)."""
import os

# Command lines of the processes trials run in: a warm worker, or a process
# per trial.
TRIAL_PROCESSES = ("-m spinesearch.evaluate", "-m spinesearch.worker")


def descendants(pid):
  """Pids of every living process below `pid`."""
  children = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except (FileNotFoundError, ProcessLookupError):  # the process ended meanwhile
        continue
      if fields[0] != "Z":
        children.setdefault(int(fields[1]), []).append(int(entry))
  found, stack = [], [pid]
  while stack:
    for child in children.get(stack.pop(), []):
      found.append(child)
      stack.append(child)
  return found


def cmdline(pid):
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode(errors="replace")
  except (FileNotFoundError, ProcessLookupError):
    return ""


def trial_processes(pid):
  """Pids of the trial processes below `pid`."""
  return [p for p in descendants(pid) if any(command in cmdline(p) for command in TRIAL_PROCESSES)]
