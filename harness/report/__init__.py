"""Reading runs back: the results table, `harness runs`, `harness compare`.

Owns: the table's rows (`rows`), the shared presentation of a run and an iteration in a cell
(`cells`: `table`, `runs` and `compare` all use it), the three RESULTS tables (`tables`), the text
they become (`render`: markdown, the README block, csv/json), the committed file read back
(`committed`), the curves plot (`plot`), the trust statistics (`stats`: paired bootstrap
intervals, McNemar, verdicts, through scipy and statsmodels; `trust`: which runs stand for a side,
their predictions, the cells and lines), and the commands `table`, `runs`, `compare`.
May import: harness.track's readers (harness.track.fast_store.open_reader), harness.ledger and
harness.core. No TensorFlow, and no MLflow on the SQLite fast path: the MLflow client is reached
only through harness.track, for stores fast_store cannot read.

The names below are the package's public face (`from harness import report`); modules inside the
package import from each other's modules.
"""

from harness.report.cells import compact_params
from harness.report.render import README_WIDTH, RESULTS_END, RESULTS_START, markdown, readme_table
from harness.report.rows import collect
from harness.report.table import default_out, refresh_readme, run_table
from harness.report.tables import Layout, build

__all__ = ["README_WIDTH", "RESULTS_END", "RESULTS_START", "Layout", "build", "collect", "compact_params",
           "default_out", "markdown", "readme_table", "refresh_readme", "run_table"]
