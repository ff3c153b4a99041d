"""The technician's read-only web page (`dh-agent serve`); see docs/web.md."""
