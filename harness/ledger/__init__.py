from harness.ledger.book import *  # noqa: F401,F403  (temporary facade)
