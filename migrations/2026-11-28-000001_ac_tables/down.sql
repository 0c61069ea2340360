-- Deliberately drops nothing: servers, applications, application_groups and
-- application_group_members are AC's tables (and AC's data). The module never drops AC's
-- tables, columns or indexes, not even the ones its up.sql may have added; running up.sql
-- again is a no-op because every statement in it is IF NOT EXISTS.
SELECT 1;
