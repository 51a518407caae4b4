/**
 * Table names shared by the SQL sinks: a pipeline's rows live in the table named after it, a
 * side output's (a stage routed the record there) in `<pipeline>__<output>`.
 */

/** A SQL identifier, double-quoted (SQLite and PostgreSQL alike). */
export const quoteIdent = (ident: string): string => `"${ident.replaceAll('"', '""')}"`;

export const sideOutputTable = (pipeline: string, output: string): string => `${pipeline}__${output}`;
