"""What a person runs: ``cli`` (the ``kql`` command), ``shell`` (its SQL prompt), ``demo`` (what
``make demo`` runs) and ``serve`` (the explorer in a browser). Library code never imports these."""
