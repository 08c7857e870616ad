"""HTTP routes, one module per resource: jobs (REST API), pages (HTML), health."""
