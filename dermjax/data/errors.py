"""The one error bad ISIC input raises: every bad file with its problem."""


class DatasetError(ValueError):
  """Bad input data. `problems` is a list of (path, what is wrong), one per bad file."""

  def __init__(self, problems, header="bad ISIC data"):
    if isinstance(problems, tuple) and len(problems) == 2 and isinstance(problems[0], str):
      problems = [problems]
    self.problems = [(str(path), str(what)) for path, what in problems]
    self.header = header
    lines = [f"{header}: {len(self.problems)} problem(s)"]
    lines += [f"  {path}: {what}" for path, what in self.problems]
    super().__init__("\n".join(lines))
