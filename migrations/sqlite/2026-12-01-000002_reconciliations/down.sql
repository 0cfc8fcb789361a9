DROP TABLE reconciliation_bills;
DROP TABLE reconciliation_differences;
DROP TABLE reconciliations;
