UPDATE stats_quarantine SET resolved_at = now(), resolution = %(resolution)s WHERE id = %(id)s
