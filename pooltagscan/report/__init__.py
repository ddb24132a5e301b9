"""The attribution report: dump statistics joined with the tag database and driver scans."""
