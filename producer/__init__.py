"""The producer side: the HTTP API (``agentfleet.producer.api``) and the command line
(``agentfleet.producer.cli``). The Python client is its own distribution:
``agentfleet.client``."""
