"""The web dashboard: static pages served from this package, and the login that opens a
session for the admin API. Everything it shows comes from the admin API."""
