"""``segscore import``: event logs in other layouts -> the contract's event file.

Sources are CSV (any delimiter, runs of whitespace too), Parquet or JSON lines (by
suffix, each also gzip-compressed) in one of four layouts:

* ``native``: the contract's own columns (what ``segscore simulate`` writes);
* ``ecommerce``: the public "eCommerce behavior data from multi category store"
  layout (event_time, event_type view/cart/remove_from_cart/purchase, ...);
* ``transactions``: plain purchase logs (customer id, date, amount[, quantity]);
* ``mapping``: anything else, described by a small YAML/JSON mapping file.

Every layout reduces to a :class:`~.layouts.Mapping` (source columns -> contract
fields), and one vectorised validator applies the rules of :class:`core.events.Event`
to whole columns. Values the fast paths do not recognise as canonical (odd
whitespace, exotic ISO forms, ``"1_000"``...) are decided by ``Event`` itself, one
distinct value at a time, so the importer and ``parse_event`` cannot drift apart. Bad
rows keep their line number in the source file and a reason from ``parse_event``'s
vocabulary.

The modules, in the order an import runs through them:

* :mod:`.layouts`: layouts, mappings and their detection;
* :mod:`.formats`: gzip, the CSV delimiter (given or sniffed), staging as plain CSV;
* :mod:`.sources`: reading CSV, Parquet and JSON lines into columns with line numbers;
* :mod:`.columns` and :mod:`.timestamps`: source columns -> contract-typed columns;
* :mod:`.validation`: each row's verdict, accepted events and bad rows;
* :mod:`.output`: the event file's schema, the self-check, writing;
* :mod:`.run`: :func:`import_events`, one whole import and its summary.
"""

from training.event_import.layouts import ImportFailed
from training.event_import.run import ImportResult, ImportSummary, import_events

__all__ = ["ImportFailed", "ImportResult", "ImportSummary", "import_events"]
