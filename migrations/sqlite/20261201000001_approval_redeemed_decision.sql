-- Owned by the approval service: the decision a grant was spent on, so a
-- retried redemption for the same decision gets the same answer.
ALTER TABLE approval_requests ADD COLUMN redeemed_decision_id TEXT NOT NULL DEFAULT '';
